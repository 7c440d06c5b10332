//! `rediss://` against a real `redis-server` that speaks only TLS and wants a client
//! certificate (feature `tls`). Certificates come from `openssl`, made for the test.

#![cfg(feature = "tls")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use storecast::Store;
use storecast_redis::{ConnectError, Options, QueueOptions, Redis};

/// A CA, a server certificate for localhost signed by it, and a client certificate.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make() -> Certificates {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "storecast-tls-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success(), "openssl {args:?} failed");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=storecast test CA",
        ]);
        // Extensions make them X.509 v3, which rustls requires.
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for name in ["server", "client"] {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ]);
            let mut sign = vec![
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
            ];
            let extensions = format!("{name}.ext");
            sign.extend(["-extfile", &extensions]);
            openssl(&sign);
        }
        Certificates { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// redis-server with TLS only, client certificates required.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(certificates: &Certificates) -> TlsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = |name: &str| certificates.path(name).to_string_lossy().into_owned();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                &path("server.crt"),
                "--tls-key-file",
                &path("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &path("ca.crt"),
                "--tls-auth-clients",
                "yes",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&certificates.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install -y redis-server)");
        let server = TlsServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.cli(certificates, &["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server with TLS did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn cli(&self, certificates: &Certificates, args: &[&str]) -> String {
        let path = |name: &str| certificates.path(name).to_string_lossy().into_owned();
        let output = Command::new("redis-cli")
            .args([
                "--tls",
                "--cacert",
                &path("ca.crt"),
                "--cert",
                &path("client.crt"),
                "--key",
                &path("client.key"),
            ])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_work_over_tls_with_a_private_ca_and_a_client_certificate() {
    let certificates = Certificates::make();
    let server = TlsServer::start(&certificates);
    let url = format!("rediss://localhost:{}", server.port);
    let options = Options::new(&url)
        .root_certificate(certificates.read("ca.crt"))
        .client_certificate(
            certificates.read("client.crt"),
            certificates.read("client.key"),
        );
    let redis = Redis::connect_with(options)
        .await
        .expect("a TLS connection");

    let latest = redis.data_store::<String>("secure").await.unwrap();
    let mut subscriber = latest.subscribe();
    server.cli(&certificates, &["PUBLISH", "secure", "over TLS"]);
    let message = tokio::time::timeout(Duration::from_secs(10), subscriber.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(*message, "over TLS");

    let queue = redis
        .queue_store::<String>("secure-queue", QueueOptions::default())
        .await
        .unwrap();
    let mut reader = queue.subscribe();
    let position = queue.submit("queued over TLS".to_string()).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), reader.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (message.as_str(), message.position()),
        ("queued over TLS", position)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_or_a_missing_client_certificate_is_a_clear_error() {
    let certificates = Certificates::make();
    let server = TlsServer::start(&certificates);
    let url = format!("rediss://localhost:{}", server.port);

    // The system's trust store does not know the test CA.
    let error = Redis::connect_with(Options::new(&url).connect_timeout(Duration::from_secs(3)))
        .await
        .expect_err("an untrusted certificate");
    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );

    // Trusted, but without the client certificate the server requires.
    let error = Redis::connect_with(
        Options::new(&url)
            .root_certificate(certificates.read("ca.crt"))
            .connect_timeout(Duration::from_secs(3)),
    )
    .await
    .expect_err("no client certificate");
    assert!(
        matches!(
            error,
            ConnectError::Unreachable { .. } | ConnectError::Timeout { .. }
        ),
        "{error:?}"
    );
}
