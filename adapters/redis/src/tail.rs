//! The shared stream readers: a few connections, each blocked in one `XREAD` over many
//! streams, bring every queue store of a [`Redis`] handle its new entries. The connections
//! a process holds do not grow with its topics, and an idle stream costs Redis nothing
//! between entries: one `XREAD` per reader per health-check interval, and one `MGET` of
//! the readers' epoch keys per audit interval, however many streams there are.
//!
//! Each queue store's reading task holds a [`Tail`]: the reader keeps reading its stream
//! after the id the task last asked for, and keeps up to a batch of entries ahead for it.
//! As long as the task asks for the entries after the last one it was given, the reader
//! never has to restart its `XREAD` for it. Anything else (a new stream, a task that read
//! on its own, an epoch change) changes what the `XREAD` under way must cover: the reader
//! is woken with `CLIENT UNBLOCK` from the command connection and reads again with the
//! new set.
//!
//! What a reader brings is a hint, never the numbering: the reading task numbers entries
//! from its own cursor and checks the stream's counters (see `queue_store`). When the
//! reader cannot tell whether entries were trimmed before it read them, or it lost its
//! connection, or the stream's epoch key changed, it says [`Tailed::Check`] or marks the
//! entries `suspect`, and the task reads exactly.

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
/// stream whose epoch another process changed is read exactly even if no entry comes.
const AUDIT_EVERY: Duration = Duration::from_secs(30);

/// How many times a reader asks Redis to unblock its `XREAD` (which may not have reached
/// the server yet) before it lets the read time out instead.
const UNBLOCK_ATTEMPTS: usize = 50;

/// How long a reader lets changes gather before it restarts its `XREAD` for them.
const GATHER: Duration = Duration::from_millis(5);

/// A stream entry as the reader got it: its id, and its fields.
pub(crate) type RawEntry = (String, Value);

/// What a reader brings a reading task.
pub(crate) enum Tailed {
    /// Entries after the id asked for, in order. `suspect`: entries may have been trimmed
    /// between that id and the first of these before the reader saw them (the reader got
    /// a full batch), or there are more than a batch: number them by an exact read.
    Entries {
        entries: Vec<RawEntry>,
        suspect: bool,
    },
    /// Read exactly: the reader lost its connection, or the stream's epoch key no longer
    /// holds the epoch the task reads in.
    Check,
}

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

    /// Starts reading `stream` after the entry `after` for a reading task, whose batches
    /// are at most `count` entries; `epoch` is the text the stream's epoch key
    /// (`epoch_key`) holds.
    pub(crate) fn follow(
        &self,
        redis: &Redis,
        stream: &str,
        epoch_key: &str,
        epoch: &str,
        after: &str,
        count: usize,
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
                    base: after.to_owned(),
                    next: after.to_owned(),
                    generation: 0,
                    count: count.max(1),
                    buffer: Vec::new(),
                    suspect: false,
                    check: false,
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
    /// The id the buffered entries follow: the last one handed to the task.
    base: String,
    /// The id the reader reads after: the last one buffered (or `base`).
    next: String,
    /// One more each time the task moves `base` itself: an `XREAD` sent before reads
    /// after an id that no longer counts.
    generation: u64,
    count: usize,
    buffer: Vec<RawEntry>,
    suspect: bool,
    check: bool,
    waker: Option<Waker>,
}

impl Follow {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Whether the reader reads this stream in its next `XREAD`: not while a batch waits.
    fn wanted(&self) -> bool {
        !self.check && self.buffer.len() < self.count
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
    /// The entries after `after` (the id of the last entry the task read), once there are
    /// any, in the epoch whose text is `epoch`.
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
    type Output = Tailed;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Tailed> {
        let this = self.get_mut();
        let group = &this.tail.group;
        let mut state = group.lock();
        let State { follows, .. } = &mut *state;
        let follow = follows.get_mut(&this.tail.id).expect("a tail's follow");
        if follow.epoch != this.epoch {
            follow.epoch = this.epoch.to_owned();
        }
        if follow.check {
            follow.check = false;
            restart(follow, this.after);
            state.needs_reread();
            drop(state);
            group.changed.notify(usize::MAX);
            return Poll::Ready(Tailed::Check);
        }
        let mut moved = false;
        if follow.base != this.after {
            // The task read on its own (or moved to another epoch): what was buffered
            // follows another id.
            restart(follow, this.after);
            moved = true;
        }
        let ready = if follow.buffer.is_empty() {
            follow.waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            let was_full = !follow.wanted();
            let entries = std::mem::take(&mut follow.buffer);
            follow.base.clone_from(&follow.next);
            let suspect = std::mem::take(&mut follow.suspect);
            // A stream left out while its batch waited is read again.
            moved |= was_full;
            Poll::Ready(Tailed::Entries { entries, suspect })
        };
        if moved {
            state.needs_reread();
            drop(state);
            group.changed.notify(usize::MAX);
        }
        ready
    }
}

/// Forgets what was buffered, and reads after `after` from now on.
fn restart(follow: &mut Follow, after: &str) {
    follow.base = after.to_owned();
    follow.next = after.to_owned();
    follow.buffer.clear();
    follow.suspect = false;
    follow.generation += 1;
}

/// One `XREAD`'s worth: the streams, each after the earliest id any task of it needs.
struct Request {
    streams: Vec<(Arc<str>, String)>,
    count: usize,
    /// The follows it serves, with the generation each was in.
    serves: Vec<(u64, u64)>,
    /// Epoch keys to audit, with the follows that expect each text.
    audit: Option<Vec<(Arc<str>, Vec<(u64, String)>)>>,
}

/// The reader's task: reads while the group has streams; ends after a health-check
/// interval without any, closing its connection.
async fn read(redis: Redis, group: Arc<Group>) {
    let block = redis.options().health_check_value();
    let mut backoff = redis.options().backoff();
    let mut connection: Option<(ConnectionManager, i64)> = None;
    let mut audited = Instant::now();
    let mut failing = false;
    loop {
        let gathered = {
            let mut state = group.lock();
            let gathered = gather(&mut state, audited.elapsed() >= AUDIT_EVERY);
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
        let outcome = read_once(&redis, &group, &mut connection, request, block).await;
        let failed = {
            let mut state = group.lock();
            state.reading = false;
            match outcome {
                Ok(()) => None,
                Err(e) => {
                    // Every task reads on its own meanwhile (and notices Redis away itself).
                    for follow in state.follows.values_mut() {
                        follow.check = true;
                        follow.wake();
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
    let mut count = 1;
    for (&id, follow) in &state.follows {
        if !follow.wanted() {
            continue;
        }
        serves.push((id, follow.generation));
        count = count.max(follow.count);
        streams
            .entry(Arc::clone(&follow.stream))
            .and_modify(|after| {
                if is_after(after, &follow.next) {
                    after.clone_from(&follow.next);
                }
            })
            .or_insert_with(|| follow.next.clone());
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
        streams: streams.into_iter().collect(),
        count,
        serves,
        audit,
    })
}

/// One round: opens the connection if need be, audits if asked, and reads once (unblocked
/// early when what it must read changes), handing each task its entries.
async fn read_once(
    redis: &Redis,
    group: &Group,
    connection: &mut Option<(ConnectionManager, i64)>,
    request: Request,
    block: Duration,
) -> Result<(), RedisError> {
    if connection.is_none() {
        let mut fresh = redis.dedicated(block).await.map_err(|e| {
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
                    follow.check = true;
                    follow.wake();
                }
            }
        }
    }
    let mut xread = redis::cmd("XREAD");
    xread
        .arg("BLOCK")
        .arg(block.as_millis().max(1) as u64)
        .arg("COUNT")
        .arg(request.count)
        .arg("STREAMS");
    for (stream, _) in &request.streams {
        xread.arg(&**stream);
    }
    for (_, after) in &request.streams {
        xread.arg(after);
    }
    let reply: Value = futures_lite::future::or(xread.query_async(reader), async {
        unblock_when_stale(redis, group, client).await;
        std::future::pending().await
    })
    .await?;
    let mut read = parse_xread(reply)
        .ok_or_else(|| RedisError::from((redis::ErrorKind::Parse, "unexpected answer to XREAD")))?;
    if read.is_empty() {
        return Ok(());
    }
    let mut state = group.lock();
    for (id, generation) in request.serves {
        let Some(follow) = state.follows.get_mut(&id) else {
            continue;
        };
        if follow.generation != generation || follow.check {
            continue;
        }
        let Some(entries) = read.get_mut(&*follow.stream) else {
            continue;
        };
        // The read went on from the earliest id any task of this stream needed: a full
        // batch from there may have skipped entries trimmed before they were read.
        let suspect = entries.len() >= request.count.min(follow.count);
        let mut added = false;
        for (entry_id, fields) in entries.iter() {
            if is_after(entry_id, &follow.next) {
                follow.buffer.push((entry_id.clone(), fields.clone()));
                follow.next.clone_from(entry_id);
                added = true;
            }
        }
        if added {
            follow.suspect |= suspect || follow.buffer.len() >= follow.count;
            follow.wake();
        }
    }
    Ok(())
}

/// Resolves never; while the `XREAD` under way is stale, asks Redis to unblock it.
async fn unblock_when_stale(redis: &Redis, group: &Group, client: i64) {
    loop {
        let listener = group.changed.listen();
        if !group.lock().stale {
            listener.await;
            continue;
        }
        // Streams opened together (a burst of new topics) are read by one new XREAD.
        runtime::sleep(GATHER).await;
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

/// The entries per stream in an `XREAD` answer (RESP2: `[[stream, entries]]`; RESP3: a
/// map), each as its id and its fields.
fn parse_xread(reply: Value) -> Option<HashMap<String, Vec<RawEntry>>> {
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
            let entries = entries
                .into_iter()
                .map(|entry| {
                    let Value::Array(parts) = entry else {
                        return None;
                    };
                    let [id, fields] = <[Value; 2]>::try_from(parts).ok()?;
                    Some((text(id)?, fields))
                })
                .collect::<Option<Vec<_>>>()?;
            Some((text(stream)?, entries))
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
            let ids: Vec<_> = read["s"].iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(ids, ["1-0", "1-1"]);
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
