//! Where the data lives: one server, a primary found through Sentinel, or a Redis Cluster;
//! and the command connection each of them gives.

use std::sync::Mutex;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, ConnectionAddr, ErrorKind, IntoConnectionInfo, ProtocolVersion, RedisError};

/// What a `--redis` URL names.
pub(crate) enum Deployment {
    /// One server (`redis://`, `rediss://`, `unix://`).
    Single,
    /// A Redis Cluster, reached through any of these nodes (`redis+cluster://`).
    Cluster(Vec<redis::ConnectionInfo>),
    /// The primary of `service`, as these sentinels know it (`redis+sentinel://`).
    Sentinel {
        /// The sentinels' addresses.
        sentinels: Vec<ConnectionAddr>,
        /// The name the sentinels watch the primary under.
        service: String,
        /// Credentials and database for the primary (and its replicas).
        node: redis::RedisConnectionInfo,
    },
}

/// The parts of a URL that lists several nodes: `SCHEME://[user:password@]host:port,
/// host:port[/path][?query]`.
struct Nodes<'a> {
    userinfo: Option<&'a str>,
    hosts: Vec<&'a str>,
    path: &'a str,
    query: &'a str,
}

fn split_nodes(rest: &str) -> Nodes<'_> {
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    Nodes {
        userinfo,
        hosts: hosts.split(',').filter(|h| !h.is_empty()).collect(),
        path,
        query,
    }
}

fn invalid(what: &str) -> RedisError {
    RedisError::from((
        ErrorKind::InvalidClientConfig,
        "invalid Redis URL",
        what.to_owned(),
    ))
}

/// Tells which deployment `url` names. Cluster and Sentinel URLs list their nodes
/// separated by commas; credentials apply to the data nodes.
pub(crate) fn deployment(url: &str) -> Result<Deployment, RedisError> {
    if let Some(rest) = url.strip_prefix("redis+cluster://") {
        let nodes = split_nodes(rest);
        if nodes.hosts.is_empty() {
            return Err(invalid(
                "a cluster URL names at least one node: redis+cluster://host:port[,host:port...]",
            ));
        }
        if !nodes.path.is_empty() && nodes.path != "0" {
            return Err(invalid("a Redis Cluster has only database 0"));
        }
        let userinfo = nodes.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let query = if nodes.query.is_empty() {
            String::new()
        } else {
            format!("?{}", nodes.query)
        };
        let infos = nodes
            .hosts
            .iter()
            .map(|host| format!("redis://{userinfo}{host}/{query}").into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Deployment::Cluster(infos));
    }
    if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        let nodes = split_nodes(rest);
        let (service, db) = nodes.path.split_once('/').unwrap_or((nodes.path, ""));
        if nodes.hosts.is_empty() || service.is_empty() {
            return Err(invalid(
                "a Sentinel URL names the sentinels and the service: redis+sentinel://host:port[,host:port...]/service[/db]",
            ));
        }
        let sentinels = nodes
            .hosts
            .iter()
            .map(|host| {
                format!("redis://{host}")
                    .into_connection_info()
                    .map(|info| info.addr().clone())
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The data nodes' settings, read as a one-server URL would be.
        let userinfo = nodes.userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let query = if nodes.query.is_empty() {
            String::new()
        } else {
            format!("?{}", nodes.query)
        };
        let mut node = format!("redis://{userinfo}localhost/{db}{query}")
            .into_connection_info()?
            .redis_settings()
            .clone();
        if !nodes.query.contains("protocol=") {
            node = node.set_protocol(ProtocolVersion::RESP3);
        }
        return Ok(Deployment::Sentinel {
            sentinels,
            service: service.to_owned(),
            node,
        });
    }
    if url.starts_with("rediss+cluster://") || url.starts_with("rediss+sentinel://") {
        return Err(invalid(
            "TLS is supported with one server (rediss://), not yet with Cluster or Sentinel",
        ));
    }
    Ok(Deployment::Single)
}

/// Where connections go.
pub(crate) enum Endpoint {
    /// One server.
    Single(Client),
    /// Whichever server the sentinels call the primary now.
    Sentinel {
        lookup: Box<async_lock::Mutex<SentinelClient>>,
        /// The primary last found, for connections that need no fresh lookup.
        current: Mutex<Client>,
        /// For messages: the sentinels and the service.
        service: String,
    },
    /// A Redis Cluster (its connection finds the nodes).
    Cluster(Vec<redis::ConnectionInfo>),
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Single(_) => f.write_str("Endpoint::Single"),
            Endpoint::Sentinel { service, .. } => write!(f, "Endpoint::Sentinel({service})"),
            Endpoint::Cluster(_) => f.write_str("Endpoint::Cluster"),
        }
    }
}

impl Endpoint {
    /// Asks the sentinels for the primary of `service` (and checks it says it is one).
    pub(crate) async fn sentinel(
        sentinels: Vec<ConnectionAddr>,
        service: &str,
        node: redis::RedisConnectionInfo,
    ) -> Result<Endpoint, RedisError> {
        let mut builder =
            SentinelClientBuilder::new(sentinels, service, SentinelServerType::Master)?
                .set_client_to_redis_db(node.db())
                .set_client_to_redis_protocol(node.protocol());
        if let Some(username) = node.username() {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = node.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        let mut lookup = builder.build()?;
        let current = crate::runtime::erased(lookup.async_get_client()).await?;
        Ok(Endpoint::Sentinel {
            lookup: Box::new(async_lock::Mutex::new(lookup)),
            current: Mutex::new(current),
            service: service.to_owned(),
        })
    }

    /// The client to connect with: for Sentinel, the primary found last, or (`fresh`) the
    /// one the sentinels name now. A Cluster has no one client.
    pub(crate) async fn client(&self, fresh: bool) -> Result<Client, RedisError> {
        match self {
            Endpoint::Single(client) => Ok(client.clone()),
            Endpoint::Sentinel {
                lookup, current, ..
            } => {
                if !fresh {
                    return Ok(current.lock().expect("primary lock").clone());
                }
                let mut lookup = lookup.lock().await;
                // Boxed: the crate's lookup future is deeply nested.
                let found = crate::runtime::erased(lookup.async_get_client()).await?;
                *current.lock().expect("primary lock") = found.clone();
                Ok(found)
            }
            Endpoint::Cluster(_) => Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "a Redis Cluster has no single server to connect to",
            ))),
        }
    }

    /// The address of the server connections go to now, for messages.
    pub(crate) fn address(&self) -> String {
        match self {
            Endpoint::Single(client) => client.get_connection_info().addr().to_string(),
            Endpoint::Sentinel {
                current, service, ..
            } => format!(
                "{} (primary of {service})",
                current
                    .lock()
                    .expect("primary lock")
                    .get_connection_info()
                    .addr()
            ),
            Endpoint::Cluster(_) => "the Redis Cluster".to_owned(),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Endpoint::Cluster(_))
    }

    pub(crate) fn is_sentinel(&self) -> bool {
        matches!(self, Endpoint::Sentinel { .. })
    }
}

/// The shared command connection: to one server, or to every primary of a Cluster (the
/// `redis` crate routes each command by its keys' slot, and follows the slots when they
/// move).
#[derive(Clone)]
pub(crate) enum Commands {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Commands::Single(connection) => connection.req_packed_command(cmd),
            Commands::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Commands::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(connection) => connection.get_db(),
            Commands::Cluster(connection) => connection.get_db(),
        }
    }
}

/// A key or channel named after `base`, in the same Cluster hash slot as `base`: `base`
/// and `suffix` when `base` has a hash tag (`{...}`), else `{base}` and `suffix` (the
/// slot of `{base}` is the slot of `base`). `None` when `base` has braces but no tag, so
/// that no name can share its slot.
pub(crate) fn same_slot(base: &str, suffix: &str) -> Option<String> {
    if let Some(open) = base.find('{') {
        return match base[open + 1..].find('}') {
            Some(len) if len > 0 => Some(format!("{base}{suffix}")),
            _ => None,
        };
    }
    if base.contains('}') {
        return None;
    }
    Some(format!("{{{base}}}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_the_slot_of_their_base() {
        assert_eq!(
            same_slot("prices", ":latest").as_deref(),
            Some("{prices}:latest")
        );
        assert_eq!(
            same_slot("{eu}prices", ":latest").as_deref(),
            Some("{eu}prices:latest")
        );
        assert_eq!(same_slot("a{}b", ":x"), None);
        assert_eq!(same_slot("a}b", ":x"), None);
        assert_eq!(same_slot("a{b", ":x"), None);
    }

    #[test]
    fn cluster_and_sentinel_urls_are_read() {
        let Ok(Deployment::Cluster(nodes)) =
            deployment("redis+cluster://:secret@127.0.0.1:7000,127.0.0.1:7001")
        else {
            panic!("a cluster URL");
        };
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].addr().to_string(), "127.0.0.1:7001");
        assert_eq!(nodes[0].redis_settings().password(), Some("secret"));
        let Ok(Deployment::Sentinel {
            sentinels,
            service,
            node,
        }) = deployment("redis+sentinel://u:p@10.0.0.1:26379,10.0.0.2:26379/orders/2")
        else {
            panic!("a sentinel URL");
        };
        assert_eq!(sentinels.len(), 2);
        assert_eq!(service, "orders");
        assert_eq!(node.db(), 2);
        assert_eq!(node.username(), Some("u"));
        assert_eq!(node.protocol(), ProtocolVersion::RESP3);
        assert!(deployment("redis+sentinel://10.0.0.1:26379").is_err());
        assert!(deployment("redis+cluster://").is_err());
        assert!(deployment("rediss+cluster://h:1").is_err());
        assert!(matches!(deployment("redis://h:1"), Ok(Deployment::Single)));
    }
}
