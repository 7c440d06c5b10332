//! The shared stream readers: a few connections, each blocked in one `XREAD` over many
//! streams, watch every queue store of a [`Redis`] handle for entries other programs add
//! with a plain `XADD`. The connections a process holds do not grow with its topics, and
//! an idle stream costs Redis nothing between entries: one `XREAD` per reader per
//! health-check interval, and one `MGET` of the epoch keys per audit interval, however
//! many streams there are.
//!
//! A reader only says [`Look`]: the reading task reads exactly, on the command connection,
//! and numbers what it reads itself. The stores' own entries do not wait for a reader: the
//! add script announces each on a channel of the shared subscription (see `queue_store`).
//! A reader is paced so that its `XREAD`s, whose cost grows with the streams they cover,
//! never take more than a few percent of Redis; when what it must cover changes (a new
//! stream, a task that read on), it is woken with `CLIENT UNBLOCK` from the command
//! connection.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use event_listener::Event;
use redis::aio::ConnectionManager;
use redis::{RedisError, Value};

use crate::connection::Redis;
use crate::runtime;

/// How often a reader checks the epoch keys of the streams it reads (one `MGET`), so that a
/// stream whose epoch another process changed is read exactly even if no entry comes: this
/// many health-check intervals, ...
const AUDIT_EVERY: u32 = 6;
/// ... or this often, if that is sooner (a reader audits between two `XREAD`s, so never
/// more often than each health-check interval).
const AUDIT_AT_LEAST: Duration = Duration::from_secs(30);

/// How many times a reader asks Redis to unblock its `XREAD` (which may not have reached
/// the server yet) before it lets the read time out instead.
const UNBLOCK_ATTEMPTS: usize = 50;

/// The least time between the starts of two `XREAD`s of one reader, per stream read.
const PAUSE_PER_STREAM: Duration = Duration::from_micros(40);
/// ... and in any case.
const MIN_PAUSE: Duration = Duration::from_millis(10);
/// ... and at most.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// How long a reader lets changes gather before it restarts its `XREAD` for them.
const GATHER: Duration = Duration::from_millis(5);

/// A reader's word to a reading task: its stream has entries after the id the task gave
/// (or the reader lost Redis, or the stream's epoch key changed): read it exactly.
pub(crate) struct Look;

/// The readers of one [`Redis`] handle: each stream is read by the one its name hashes to.
pub(crate) struct Tails {
    groups: Box<[Arc<Group>]>,
}

impl Tails {
    pub(crate) fn new(readers: usize) -> Tails {
        Tails {
            groups: (0..readers.max(1))
                .map(|index| {
                    Arc::new(Group {
                        index,
                        state: Mutex::new(State::default()),
                        changed: Event::new(),
                    })
                })
                .collect(),
        }
    }

    /// Starts watching `stream` after the entry `after` for a reading task; `epoch` is the
    /// text the stream's epoch key (`epoch_key`) holds.
    pub(crate) fn follow(
        &self,
        redis: &Redis,
        stream: &str,
        epoch_key: &str,
        epoch: &str,
        after: &str,
    ) -> Tail {
        let hash = stream
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        let group = Arc::clone(&self.groups[(hash % self.groups.len() as u64) as usize]);
        let id = {
            let mut state = group.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.follows.insert(
                id,
                Follow {
                    stream: Arc::from(stream),
                    epoch_key: Arc::from(epoch_key),
                    epoch: epoch.to_owned(),
                    after: after.to_owned(),
                    generation: 0,
                    look: false,
                    waker: None,
                },
            );
            state.needs_reread();
            if !state.running {
                state.running = true;
                runtime::spawn(read(redis.clone(), Arc::clone(&group)));
            }
            id
        };
        group.changed.notify(usize::MAX);
        Tail { group, id }
    }

    /// How many readers have a connection open now.
    pub(crate) fn open_readers(&self) -> usize {
        self.groups.iter().filter(|g| g.lock().connected).count()
    }
}

/// One reader: its streams, and the task that reads them while it has any.
struct Group {
    index: usize,
    state: Mutex<State>,
    /// Notified when what the reader must read changed (or the first stream came).
    changed: Event,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct State {
    follows: HashMap<u64, Follow>,
    next_id: u64,
    /// A task reads for this group.
    running: bool,
    /// Its connection is open.
    connected: bool,
    /// An `XREAD` is under way.
    reading: bool,
    /// The `XREAD` under way no longer covers what it must: unblock it.
    stale: bool,
    /// Counts the reader's connections: a drop of an older one is no news.
    connection: u64,
    /// The current connection dropped (it reconnects with another client id): a new one
    /// is opened.
    dropped: bool,
}

impl State {
    fn needs_reread(&mut self) {
        if self.reading {
            self.stale = true;
        }
    }
}

/// What a reader keeps for one reading task.
struct Follow {
    stream: Arc<str>,
    epoch_key: Arc<str>,
    /// The epoch text the task reads in (for the audit).
    epoch: String,
    /// The id of the last entry the task read: the reader watches for one after it.
    after: String,
    /// One more each time the task moves `after`: an `XREAD` sent before watched from an
    /// id that no longer counts.
    generation: u64,
    /// The task should read (see [`Look`]); it is not watched until it asks again.
    look: bool,
    waker: Option<Waker>,
}

impl Follow {
    fn tell(&mut self) {
        self.look = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// A reading task's place with its reader; dropping it stops the reading.
pub(crate) struct Tail {
    group: Arc<Group>,
    id: u64,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("reader", &self.group.index)
            .finish_non_exhaustive()
    }
}

impl Tail {
    /// Resolves once the stream has an entry after `after` (the id of the last entry the
    /// task read), in the epoch whose text is `epoch`, or the task should read anyway.
    pub(crate) fn next<'a>(&'a mut self, after: &'a str, epoch: &'a str) -> Next<'a> {
        Next {
            tail: self,
            after,
            epoch,
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        state.follows.remove(&self.id);
    }
}

/// The future of [`Tail::next`].
pub(crate) struct Next<'a> {
    tail: &'a mut Tail,
    after: &'a str,
    epoch: &'a str,
}

impl Future for Next<'_> {
    type Output = Look;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Look> {
        let this = self.get_mut();
        let group = &this.tail.group;
        let mut state = group.lock();
        let follow = state
            .follows
            .get_mut(&this.tail.id)
            .expect("a tail's follow");
        if follow.epoch != this.epoch {
            follow.epoch = this.epoch.to_owned();
        }
        if follow.look {
            follow.look = false;
            return Poll::Ready(Look);
        }
        follow.waker = Some(cx.waker().clone());
        if follow.after != this.after {
            // Watched again, from where the task is now.
            follow.after = this.after.to_owned();
            follow.generation += 1;
            state.needs_reread();
            drop(state);
            group.changed.notify(usize::MAX);
        }
        Poll::Pending
    }
}

impl Drop for Next<'_> {
    fn drop(&mut self) {
        // Not waiting any more (an announcement came first, or the task stopped).
        if let Some(follow) = self.tail.group.lock().follows.get_mut(&self.tail.id) {
            follow.waker = None;
        }
    }
}

/// Epoch keys, each with the follows (and the text each expects) that read under it.
type Audit = Vec<(Arc<str>, Vec<(u64, String)>)>;

/// One `XREAD`'s worth: the streams, each after the earliest id any task of it needs.
struct Request {
    streams: Vec<(Arc<str>, String)>,
    /// How many streams the reader watches in all (some may be left out of this read).
    watched: usize,
    /// The follows it serves, with the generation each was in.
    serves: Vec<(u64, u64)>,
    /// Epoch keys to audit, with the follows that expect each text.
    audit: Option<Audit>,
}

/// The reader's task: reads while the group has streams; ends after a health-check
/// interval without any, closing its connection.
async fn read(redis: Redis, group: Arc<Group>) {
    let block = redis.options().health_check_value();
    let mut backoff = redis.options().backoff();
    let mut connection: Option<(ConnectionManager, i64)> = None;
    let audit_every = block.saturating_mul(AUDIT_EVERY).min(AUDIT_AT_LEAST);
    let mut audited = Instant::now();
    let mut last_read = Instant::now() - MAX_PAUSE;
    let mut failing = false;
    loop {
        let gathered = {
            let mut state = group.lock();
            let gathered = gather(&mut state, audited.elapsed() >= audit_every);
            if gathered.is_some() {
                state.reading = true;
                state.stale = false;
            }
            gathered.ok_or((state.follows.is_empty(), group.changed.listen()))
        };
        let request = match gathered {
            Ok(request) => request,
            Err((empty, listener)) => {
                if runtime::timeout(block, listener).await.is_none() && empty {
                    let mut state = group.lock();
                    if state.follows.is_empty() {
                        // Idle: the connection goes, and a new task comes with the next
                        // stream.
                        state.running = false;
                        state.connected = false;
                        return;
                    }
                }
                continue;
            }
        };
        if request.audit.is_some() {
            audited = Instant::now();
        }
        // An XREAD costs Redis about a microsecond or two per stream (it parses, looks
        // up and registers every one): re-issued at most this often, it takes no more than
        // a few percent of a Redis core, however busy the streams. The stores' own
        // entries are announced at once (see `queue_store`); this paces what other
        // programs add with XADD.
        let pause = (PAUSE_PER_STREAM * request.watched as u32).clamp(MIN_PAUSE, MAX_PAUSE);
        if let Some(wait) = (last_read + pause).checked_duration_since(Instant::now()) {
            runtime::sleep(wait).await;
        }
        last_read = Instant::now();
        // Unblocked (for a new stream, or one watched again) no sooner than the next
        // read may start anyway.
        let not_before = last_read + pause;
        let outcome = read_once(&redis, &group, &mut connection, request, block, not_before).await;
        let failed = {
            let mut state = group.lock();
            state.reading = false;
            match outcome {
                Ok(()) => None,
                Err(e) => {
                    // Every task reads on its own meanwhile (and notices Redis away itself).
                    for follow in state.follows.values_mut() {
                        follow.tell();
                    }
                    // A new connection, and with it the client id to unblock.
                    connection = None;
                    Some(e)
                }
            }
        };
        group.lock().connected = connection.is_some();
        match failed {
            None if failing => {
                failing = false;
                backoff.reset();
                tracing::info!(reader = group.index, "the stream reader reads again");
            }
            None => {}
            Some(e) => {
                if !failing {
                    tracing::warn!(reader = group.index, error = %e, "the stream reader lost Redis; its streams are read exactly meanwhile");
                    failing = true;
                }
                backoff.wait().await;
            }
        }
    }
}

/// What the next `XREAD` reads (`None`: nothing, for now), and which epoch keys it audits.
fn gather(state: &mut State, audit: bool) -> Option<Request> {
    let mut streams: HashMap<Arc<str>, String> = HashMap::new();
    let mut serves = Vec::new();
    for (&id, follow) in &state.follows {
        if follow.look {
            continue;
        }
        serves.push((id, follow.generation));
        streams
            .entry(Arc::clone(&follow.stream))
            .and_modify(|after| {
                if is_after(after, &follow.after) {
                    after.clone_from(&follow.after);
                }
            })
            .or_insert_with(|| follow.after.clone());
    }
    if streams.is_empty() {
        return None;
    }
    let audit = audit.then(|| {
        let mut keys: HashMap<Arc<str>, Vec<(u64, String)>> = HashMap::new();
        for (&id, follow) in &state.follows {
            keys.entry(Arc::clone(&follow.epoch_key))
                .or_default()
                .push((id, follow.epoch.clone()));
        }
        keys.into_iter().collect()
    });
    Some(Request {
        watched: state.follows.len(),
        streams: streams.into_iter().collect(),
        serves,
        audit,
    })
}

/// One round: opens the connection if need be, audits if asked, and reads once (unblocked
/// early when what it must read changes), handing each task its entries.
async fn read_once(
    redis: &Redis,
    group: &Arc<Group>,
    connection: &mut Option<(ConnectionManager, i64)>,
    request: Request,
    block: Duration,
    not_before: Instant,
) -> Result<(), RedisError> {
    if std::mem::take(&mut group.lock().dropped) {
        *connection = None;
    }
    if connection.is_none() {
        let generation = {
            let mut state = group.lock();
            state.connection += 1;
            state.connection
        };
        let weak = Arc::downgrade(group);
        let dropped = move || {
            let Some(group) = weak.upgrade() else {
                return;
            };
            let mut state = group.lock();
            if state.connection != generation {
                return;
            }
            // Whatever happened meanwhile (a failover, a restart that lost entries),
            // every task reads exactly.
            state.dropped = true;
            for follow in state.follows.values_mut() {
                follow.tell();
            }
            drop(state);
            group.changed.notify(usize::MAX);
        };
        let mut fresh = redis.dedicated(block, dropped).await.map_err(|e| {
            RedisError::from((redis::ErrorKind::Io, "could not connect", e.to_string()))
        })?;
        let client: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut fresh)
            .await?;
        *connection = Some((fresh, client));
        group.lock().connected = true;
    }
    let (reader, client) = connection.as_mut().expect("opened above");
    let client = *client;
    if let Some(audit) = &request.audit {
        let mut mget = redis::cmd("MGET");
        for (key, _) in audit {
            mget.arg(&**key);
        }
        let epochs: Vec<Option<String>> = mget.query_async(reader).await?;
        let mut state = group.lock();
        for ((_, expecting), epoch) in audit.iter().zip(epochs) {
            for (id, expected) in expecting {
                if let Some(follow) = state.follows.get_mut(id)
                    && epoch.as_deref() != Some(expected.as_str())
                {
                    follow.tell();
                }
            }
        }
    }
    let mut xread = redis::cmd("XREAD");
    xread
        .arg("BLOCK")
        .arg(block.as_millis().max(1) as u64)
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS");
    for (stream, _) in &request.streams {
        xread.arg(&**stream);
    }
    for (_, after) in &request.streams {
        xread.arg(after);
    }
    let reply: Value = futures_lite::future::or(xread.query_async(reader), async {
        unblock_when_stale(redis, group, client, not_before).await;
        std::future::pending().await
    })
    .await?;
    let read = parse_xread(reply)
        .ok_or_else(|| RedisError::from((redis::ErrorKind::Parse, "unexpected answer to XREAD")))?;
    if read.is_empty() {
        return Ok(());
    }
    let mut state = group.lock();
    for (id, generation) in request.serves {
        let Some(follow) = state.follows.get_mut(&id) else {
            continue;
        };
        if follow.generation != generation || follow.look {
            continue;
        }
        let newer = read
            .get(&*follow.stream)
            .is_some_and(|newest| is_after(newest, &follow.after));
        // A task that is not waiting is reading, and comes back with where it got to.
        if newer && follow.waker.is_some() {
            follow.tell();
        }
    }
    Ok(())
}

/// Resolves never; while the `XREAD` under way is stale, asks Redis to unblock it.
async fn unblock_when_stale(redis: &Redis, group: &Group, client: i64, not_before: Instant) {
    loop {
        let listener = group.changed.listen();
        if !group.lock().stale {
            listener.await;
            continue;
        }
        // Streams opened together (a burst of new topics) are read by one new XREAD.
        let now = Instant::now();
        runtime::sleep(GATHER.max(not_before.saturating_duration_since(now))).await;
        for _ in 0..UNBLOCK_ATTEMPTS {
            let unblocked: Result<i64, RedisError> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(client)
                .query_async(&mut redis.commands())
                .await;
            match unblocked {
                Ok(1) => return std::future::pending().await,
                // Not blocked yet (the XREAD is on its way): again, shortly.
                Ok(_) => runtime::sleep(Duration::from_millis(2)).await,
                Err(e) => {
                    redis.failed(&e);
                    runtime::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        // It times out on its own.
        return std::future::pending().await;
    }
}

/// The id of the newest entry per stream in an `XREAD` answer (RESP2:
/// `[[stream, entries]]`; RESP3: a map).
fn parse_xread(reply: Value) -> Option<HashMap<String, String>> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => return Some(HashMap::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|pair| match pair {
                Value::Array(pair) => <[Value; 2]>::try_from(pair).ok().map(|[k, v]| (k, v)),
                _ => None,
            })
            .collect::<Option<_>>()?,
        Value::Map(pairs) => pairs,
        _ => return None,
    };
    pairs
        .into_iter()
        .map(|(stream, entries)| {
            let Value::Array(entries) = entries else {
                return None;
            };
            let Value::Array(mut newest) = entries.into_iter().last()? else {
                return None;
            };
            newest.truncate(1);
            Some((text(stream)?, text(newest.pop()?)?))
        })
        .collect()
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Whether the stream id `id` comes after `other` (`ms-seq`, compared as numbers).
pub(crate) fn is_after(id: &str, other: &str) -> bool {
    fn parse(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parse(id) > parse(other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xread_answers_parse_in_both_protocols() {
        let entry = |id: &str| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"data".to_vec()),
                    Value::BulkString(b"x".to_vec()),
                ]),
            ])
        };
        let resp2 = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"s".to_vec()),
            Value::Array(vec![entry("1-0"), entry("1-1")]),
        ])]);
        let resp3 = Value::Map(vec![(
            Value::BulkString(b"s".to_vec()),
            Value::Array(vec![entry("1-0"), entry("1-1")]),
        )]);
        for reply in [resp2, resp3] {
            let read = parse_xread(reply).unwrap();
            assert_eq!(read["s"], "1-1");
        }
        assert!(parse_xread(Value::Nil).unwrap().is_empty());
        assert!(parse_xread(Value::Int(3)).is_none());
    }

    #[test]
    fn ids_compare_as_numbers() {
        assert!(is_after("10-0", "9-5"));
        assert!(is_after("9-10", "9-9"));
        assert!(!is_after("9-9", "9-9"));
    }
}
