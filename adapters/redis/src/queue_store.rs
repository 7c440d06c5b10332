//! `RedisQueueStore`: every message, in order, kept by a Redis stream.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use event_listener::Event;
use futures_lite::Stream;
use redis::aio::ConnectionManager;
use redis::{RedisError, Script, Value};
use storecast::{
    Item, Message, Overflow, Position, QueueStore, QueueSubscriber, RecvError, Start, Store,
    SubmitError, TrySubmitError,
};

use crate::codec::Codec;
use crate::connection::{ConnectError, Redis, needs_new_connection};
use crate::runtime;
use crate::shutdown::Shutdown;

/// Adds an entry and answers its ordinal: how many entries the stream has ever had.
const ADD: &str = r"
if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  return redis.error_reply('storecast needs Redis 7.0 or later (XINFO STREAM entries-added)')
end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[2], '*', 'data', ARGV[3])
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then return info[i + 1] end
end
return redis.error_reply('storecast needs Redis 7.0 or later (XINFO STREAM has no entries-added)')
";

/// Reads up to ARGV[2] entries after the ordinal ARGV[1] (-1: none, only the state).
/// Answers {entries-added, the ordinal read after, last-generated-id, entries}: the
/// entries have the ordinals after+1, after+2, ...; `after` is past the requested one when
/// entries were trimmed before they could be read.
///
/// Ordinals count from the stream's `entries-added`: the retained entries are the last
/// `length` ones added, so the first has ordinal `added - length + 1`.
const READ: &str = r"
if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  return redis.error_reply('storecast needs Redis 7.0 or later (XINFO STREAM entries-added)')
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, '0-0', {}} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added, length, last
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then added = info[i + 1]
  elseif info[i] == 'length' then length = info[i + 1]
  elseif info[i] == 'last-generated-id' then last = info[i + 1] end
end
if added == nil then
  return redis.error_reply('storecast needs Redis 7.0 or later (XINFO STREAM has no entries-added)')
end
local after = tonumber(ARGV[1])
if after < 0 or after > added then return {added, added, last, {}} end
local first = added - length + 1
if after < first - 1 then after = first - 1 end
local skip = after - (first - 1)
local want = added - after
local count = math.min(tonumber(ARGV[2]), want)
if count <= 0 then return {added, after, last, {}} end
local out = {}
if skip <= want then
  local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', skip + count)
  for i = skip + 1, #entries do out[#out + 1] = entries[i] end
else
  local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', want)
  for i = #entries, #entries - count + 1, -1 do out[#out + 1] = entries[i] end
end
return {added, after, last, out}
";

/// The scripts, hashed once (they run with `EVALSHA`, falling back to `EVAL`).
static ADD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ADD));
static READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(READ));

/// How a [`RedisQueueStore`] keeps and hands out its messages.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    capacity: usize,
    overflow: Overflow,
    max_len: usize,
    exact_trim: bool,
    batch: usize,
}

impl Default for QueueOptions {
    /// 1,024 messages in memory under [`Overflow::Wait`]; the stream keeps about 10,000.
    fn default() -> Self {
        QueueOptions {
            capacity: 1024,
            overflow: Overflow::Wait,
            max_len: 10_000,
            exact_trim: false,
            batch: 512,
        }
    }
}

impl QueueOptions {
    /// How many messages this process keeps in memory for its subscribers, and the room
    /// a slow subscriber has before the overflow policy applies.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.max(1);
        self
    }

    /// What happens when this process's slowest subscriber is `capacity` behind: see
    /// [`RedisQueueStore`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// How many entries the stream keeps (`XADD ... MAXLEN ~ n`): how far back a
    /// subscriber can resume, in any process, and across restarts.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(1);
        self
    }

    /// Trims the stream to exactly `max_len` entries (`MAXLEN =`) instead of about that
    /// many (`MAXLEN ~`, which Redis does far more cheaply, in whole nodes).
    pub fn exact_trim(mut self, exact: bool) -> Self {
        self.exact_trim = exact;
        self
    }

    /// How many entries one read fetches from Redis.
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }
}

/// A queue kept by a Redis stream: every subscriber, in every process, gets every message
/// in order, none twice, and can resume from a position after a reconnect or a restart.
///
/// [`submit`](RedisQueueStore::submit) adds an entry (`XADD <stream> MAXLEN ~ n * data
/// <bytes>`); other programs can add entries the same way. One task per store per process
/// reads the stream and fans it out to this process's subscribers through an in-memory
/// [`storecast::QueueStore`].
///
/// # Positions
///
/// A message's position is its ordinal in the stream: 1 for the first entry ever added,
/// and so on (Redis counts them as `entries-added`). Positions are the same in every
/// process, so an SSE client can resume with `Last-Event-ID` on any hub.
///
/// Other programs may add entries, and trim, as long as they keep at least `max_len`
/// entries (a `MAXLEN` no smaller than this store's) and delete none with `XDEL`. Otherwise
/// this numbering can drift from Redis's; the reader notices within a second, logs a
/// warning and numbers correctly from there.
///
/// # Resuming
///
/// [`Start::After`] and [`Start::Oldest`] read what they need from the stream first, then
/// go on with the live messages: nothing lost, nothing twice. Asking for a position the
/// stream no longer keeps yields [`RecvError::Lagged`] with exactly how many were trimmed.
///
/// # Overflow
///
/// The policy applies to this process's subscribers. Under [`Overflow::Wait`],
/// `submit().await` waits until they have room, then adds the entry (so a message handed
/// back was never added); the stream keeps the rest whatever the policy. A submit returns
/// once the message has reached this process's subscribers (or after the response timeout
/// if they are not reading), so what you submit is what they see next.
///
/// # When Redis goes away
///
/// The reading task retries with backoff and carries on from the last entry it read, so
/// nothing is lost as long as the stream keeps the entries (`max_len`). A submit while
/// Redis is away fails with [`SubmitError::Unavailable`], handing the message back; if the
/// answer timed out, the entry may have been added all the same. A connection that stops
/// answering is replaced. Needs Redis 7.0 or later.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use futures_lite::StreamExt;
/// use storecast::{Start, Store};
/// use storecast_redis::{QueueOptions, Redis};
///
/// let redis = Redis::connect("redis://127.0.0.1:6379").await?;
/// let orders = redis.queue_store::<String>("orders", QueueOptions::default()).await?;
/// let mut subscriber = orders.subscribe_from(Start::Oldest);
/// orders.submit("first order".to_string()).await?;
/// // `redis-cli XADD orders '*' data "from elsewhere"` arrives here too.
/// while let Some(Ok(message)) = subscriber.next().await {
///     println!("{} at {}", *message, message.position());
/// }
/// # Ok(()) }
/// ```
pub struct RedisQueueStore<T> {
    handle: Arc<Handle<T>>,
}

/// The user's side of the store: the reading task stops when the last one goes.
struct Handle<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    redis: Redis,
    stream: String,
    options: QueueOptions,
    /// This process's subscribers read here; the reading task fills it in stream order.
    ring: QueueStore<Entry<T>>,
    /// Position of the newest entry the reading task has put into `ring`.
    read: AtomicU64,
    /// Position of the newest entry the reading task has started to put into `ring`
    /// (it may be waiting for room). A subscriber that joins the ring reads this
    /// afterwards: whatever the ring had before it joined is at or below it.
    taking: AtomicU64,
    /// Notified when `read` moves (submitters wait to see their message arrive).
    advanced: Event,
    /// Position of the newest entry submitted here: `Start::Now` begins after it.
    submitted: AtomicU64,
    /// Added to stream ordinals to make positions: it grows if the stream is deleted and
    /// starts counting again, so that positions here keep growing.
    offset: AtomicU64,
    connected: AtomicBool,
    undecodable: AtomicU64,
    shutdown: Shutdown,
}

/// What the reading task puts into the ring.
enum Entry<T> {
    Message(Message<T>),
    /// Entries trimmed from the stream before this process could read them.
    Lost(u64),
    /// The stream was deleted and started again; how much was lost is unknown.
    Restarted,
}

impl<T: Codec> RedisQueueStore<T> {
    /// Opens the queue on the stream `stream`; new subscribers start after the entries it
    /// has now.
    pub async fn open(
        redis: &Redis,
        stream: &str,
        options: QueueOptions,
    ) -> Result<Self, ConnectError> {
        let block = redis.options().health_check_value();
        let mut reader = redis.dedicated(block).await?;
        let state = read::<T>(&mut reader, stream, None, 0)
            .await
            .map_err(|e| match e.kind() {
                redis::ErrorKind::Io => redis.unreachable(e),
                _ => redis.unsupported(e),
            })?;
        let shared = Arc::new(Shared {
            redis: redis.clone(),
            stream: stream.to_owned(),
            ring: QueueStore::with_overflow(options.capacity, options.overflow),
            options,
            read: AtomicU64::new(state.after),
            taking: AtomicU64::new(state.after),
            advanced: Event::new(),
            submitted: AtomicU64::new(0),
            offset: AtomicU64::new(0),
            connected: AtomicBool::new(true),
            undecodable: AtomicU64::new(0),
            shutdown: Shutdown::default(),
        });
        runtime::spawn(follow(Arc::clone(&shared), reader, state.after, block));
        Ok(RedisQueueStore {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// Adds `value` to the stream and returns its position once this process's
    /// subscribers can read it. Under [`Overflow::Wait`] it first waits until they have
    /// room. A closed store, or Redis away, hands the value back.
    pub async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        let shared = &*self.handle.shared;
        if shared.shutdown.is_triggered() {
            return Err(SubmitError::Closed(value));
        }
        if shared.options.overflow == Overflow::Wait && shared.ring.room().await.is_err() {
            return Err(SubmitError::Closed(value));
        }
        let trim = if shared.options.exact_trim { "=" } else { "~" };
        let mut commands = shared.redis.commands();
        let added: Result<u64, RedisError> = ADD_SCRIPT
            .key(&shared.stream)
            .arg(trim)
            .arg(shared.options.max_len)
            .arg(value.encode().as_ref())
            .invoke_async(&mut commands)
            .await;
        let ordinal = match added {
            Ok(ordinal) => ordinal,
            Err(e) => {
                tracing::warn!(stream = %shared.stream, error = %e, "could not add to the stream");
                shared.redis.failed(&e);
                return Err(SubmitError::Unavailable(value));
            }
        };
        let position = shared.offset.load(Ordering::Acquire) + ordinal;
        shared.submitted.fetch_max(position, Ordering::AcqRel);
        // It is in the stream: wait (a while) for the reading task to hand it to this
        // process's subscribers, so that a submit is followed by its delivery here.
        let arrived = async {
            loop {
                if shared.read.load(Ordering::Acquire) >= position || shared.shutdown.is_triggered()
                {
                    return;
                }
                let listener = shared.advanced.listen();
                if shared.read.load(Ordering::Acquire) >= position || shared.shutdown.is_triggered()
                {
                    return;
                }
                listener.await;
            }
        };
        runtime::timeout(shared.redis.options().response_timeout_value(), arrived).await;
        Ok(Position::new(position))
    }
}

impl<T> RedisQueueStore<T> {
    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.handle.shared.stream
    }

    /// The position of the newest message this process has read from the stream.
    pub fn last_position(&self) -> Position {
        Position::new(self.handle.shared.read.load(Ordering::Acquire))
    }

    /// Whether the reading task's connection is up now (false while reconnecting).
    pub fn is_connected(&self) -> bool {
        self.handle.shared.connected.load(Ordering::Relaxed)
    }

    /// How many stream entries were skipped because they did not decode (or had no `data`
    /// field).
    pub fn undecodable(&self) -> u64 {
        self.handle.shared.undecodable.load(Ordering::Relaxed)
    }
}

impl<T: Codec> Store for RedisQueueStore<T> {
    type Value = T;
    type Subscriber = RedisQueueSubscriber<T>;

    async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        RedisQueueStore::submit(self, value).await
    }

    /// A Redis queue cannot learn a position without a round trip: this says
    /// [`Closed`](TrySubmitError::Closed), [`Full`](TrySubmitError::Full) (a lossless
    /// queue whose subscribers here have no room) or
    /// [`WouldBlock`](TrySubmitError::WouldBlock).
    fn try_submit(&self, value: T) -> Result<Position, TrySubmitError<T>> {
        let shared = &*self.handle.shared;
        if shared.shutdown.is_triggered() {
            Err(TrySubmitError::Closed(value))
        } else if shared.options.overflow == Overflow::Wait && !shared.ring.has_room() {
            Err(TrySubmitError::Full(value))
        } else {
            Err(TrySubmitError::WouldBlock(value))
        }
    }

    fn subscribe_from(&self, start: Start) -> RedisQueueSubscriber<T> {
        let shared = &self.handle.shared;
        // Registered first, so that the catch-up below and the live messages overlap
        // rather than leave a gap.
        let live = shared.ring.subscribe();
        let taken = shared.taking.load(Ordering::SeqCst);
        let now = shared
            .read
            .load(Ordering::Acquire)
            .max(shared.submitted.load(Ordering::Acquire));
        let known = taken.max(shared.submitted.load(Ordering::Acquire));
        let (after, catch_up_from) = match start {
            Start::Now => (now, None),
            Start::Oldest => (0, Some(0)),
            // Behind what this process has read, or ahead of it (another process may have
            // read further, or the position is not the stream's at all): Redis says.
            Start::After(position) if position.get() < taken || position.get() > known => {
                (position.get(), Some(position.get()))
            }
            Start::After(position) => (position.get(), None),
        };
        let offset = shared.offset.load(Ordering::Acquire);
        RedisQueueSubscriber {
            live,
            after,
            target: taken,
            fetching: catch_up_from.map(|from| fetch(shared, from.saturating_sub(offset), None)),
            backlog: VecDeque::new(),
            report_loss: start != Start::Oldest,
            first_batch: true,
            subscribed_at: now,
            shared: Arc::clone(shared),
        }
    }

    fn close(&self) {
        self.handle.shared.stop();
    }

    fn is_closed(&self) -> bool {
        self.handle.shared.shutdown.is_triggered()
    }

    fn subscriber_count(&self) -> usize {
        self.handle.shared.ring.subscriber_count()
    }
}

impl<T> Clone for RedisQueueStore<T> {
    fn clone(&self) -> Self {
        RedisQueueStore {
            handle: Arc::clone(&self.handle),
        }
    }
}

impl<T> fmt::Debug for RedisQueueStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueueStore")
            .field("address", &self.handle.shared.redis.address())
            .field("stream", &self.handle.shared.stream)
            .field("options", &self.handle.shared.options)
            .finish_non_exhaustive()
    }
}

impl<T> Drop for Handle<T> {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl<T> Shared<T> {
    fn stop(&self) {
        if self.shutdown.trigger() {
            self.advanced.notify(usize::MAX);
        }
        self.ring.close();
    }
}

/// A batch read from the stream.
struct Batch<T> {
    /// The stream's `entries-added`.
    added: u64,
    /// The ordinal the entries follow.
    after: u64,
    /// The stream's newest id, for `XREAD BLOCK`.
    last_id: String,
    /// Each entry's id, and its value (`None` if it did not decode).
    entries: Vec<(String, Option<T>)>,
}

/// Reads up to `count` entries after the ordinal `after` (`None`: none, only the state).
async fn read<T: Codec>(
    connection: &mut ConnectionManager,
    stream: &str,
    after: Option<u64>,
    count: usize,
) -> Result<Batch<T>, RedisError> {
    let reply: Value = READ_SCRIPT
        .key(stream)
        .arg(after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX)))
        .arg(count.max(1))
        .invoke_async(connection)
        .await?;
    parse_batch(reply).ok_or_else(|| {
        RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected answer to the stream read script",
        ))
    })
}

/// Reads up to `count` entries after the entry `last_id`, whose ordinal is `cursor`,
/// together with the stream's counters in one `MULTI` (no script, and no work for Redis
/// beyond the entries themselves). Exact when entries are only ever trimmed: a gap shows
/// as the first retained ordinal being past the cursor.
async fn read_after_id<T: Codec>(
    connection: &mut ConnectionManager,
    stream: &str,
    cursor: u64,
    last_id: &str,
    count: usize,
) -> Result<Batch<T>, RedisError> {
    let answer: Result<(Value, Value), RedisError> = redis::pipe()
        .atomic()
        .cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .cmd("XRANGE")
        .arg(stream)
        .arg(format!("({last_id}"))
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(connection)
        .await;
    let (info, entries) = match answer {
        Ok(answer) => answer,
        // The stream is gone: the caller sees its count back at zero.
        Err(e) if e.to_string().contains("no such key") => {
            return Ok(Batch {
                added: 0,
                after: 0,
                last_id: String::from("0-0"),
                entries: Vec::new(),
            });
        }
        Err(e) => return Err(e),
    };
    let unexpected = || {
        RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected answer to XINFO STREAM and XRANGE",
        ))
    };
    let fields: Vec<(Value, Value)> = match info {
        Value::Array(flat) => {
            let mut flat = flat.into_iter();
            std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
        }
        Value::Map(pairs) => pairs,
        _ => return Err(unexpected()),
    };
    let field = |name: &[u8]| {
        fields
            .iter()
            .find(|(key, _)| {
                matches!(key, Value::BulkString(k) if k == name)
                    || matches!(key, Value::SimpleString(k) if k.as_bytes() == name)
            })
            .map(|(_, value)| value)
    };
    let added = field(b"entries-added")
        .and_then(integer)
        .ok_or_else(unexpected)?;
    let length = field(b"length").and_then(integer).ok_or_else(unexpected)?;
    let last = match field(b"last-generated-id") {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(id)) => id.clone(),
        _ => return Err(unexpected()),
    };
    let Value::Array(entries) = entries else {
        return Err(unexpected());
    };
    let entries = entries
        .into_iter()
        .map(decode_entry)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(unexpected)?;
    // Entries before the first retained one were trimmed.
    let first_retained = added + 1 - length.min(added);
    Ok(Batch {
        added,
        after: cursor.max(first_retained - 1),
        last_id: last,
        entries,
    })
}

fn parse_batch<T: Codec>(reply: Value) -> Option<Batch<T>> {
    let Value::Array(mut parts) = reply else {
        return None;
    };
    if parts.len() != 4 {
        return None;
    }
    let entries = parts.pop()?;
    let last_id = match parts.pop()? {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok()?,
        Value::SimpleString(s) => s,
        _ => return None,
    };
    let after = integer(&parts[1])?;
    let added = integer(&parts[0])?;
    let Value::Array(entries) = entries else {
        return None;
    };
    let entries = entries
        .into_iter()
        .map(decode_entry)
        .collect::<Option<_>>()?;
    Some(Batch {
        added,
        after,
        last_id,
        entries,
    })
}

fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// An entry's id and its `data` field, decoded (`None` if it has none or it does not
/// decode); `None` if it is not an entry at all.
fn decode_entry<T: Codec>(entry: Value) -> Option<(String, Option<T>)> {
    let Value::Array(mut parts) = entry else {
        return None;
    };
    let Value::Array(fields) = parts.pop()? else {
        return None;
    };
    let id = match parts.pop()? {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok()?,
        Value::SimpleString(s) => s,
        _ => return None,
    };
    Some((id, data_field(fields)))
}

/// The decoded `data` field among an entry's fields.
fn data_field<T: Codec>(fields: Vec<Value>) -> Option<T> {
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if matches!(&name, Value::BulkString(n) if n == b"data") {
            let Value::BulkString(bytes) = value else {
                return None;
            };
            return match T::decode(&bytes) {
                Ok(value) => Some(value),
                Err(e) => {
                    tracing::warn!(error = %e, "skipped a stream entry");
                    None
                }
            };
        }
    }
    None
}

/// How often a reader that is caught up checks its count of the stream with an exact read.
const AUDIT_EVERY: Duration = Duration::from_secs(1);

/// What one read of the reading task brought.
enum Fetched<T> {
    /// An exact read by ordinal (`READ`): the stream's counters and the entries after the
    /// cursor, gaps accounted for.
    Exact(Batch<T>),
    /// A plain `XREAD BLOCK` after the last id read: the next entries, if any came.
    Tail(Vec<(String, Option<T>)>),
}

/// The reading task: follows the stream from the ordinal `cursor`, filling the ring in
/// order; retries with backoff while Redis is away.
///
/// Caught up, it waits with a plain `XREAD BLOCK` and numbers what arrives from its cursor.
/// That is exact as long as no entry after the cursor was trimmed before it was read,
/// which cannot happen when the answer is not a full batch: trimming keeps at least
/// `max_len` entries, and a batch is at most that many. A full batch (the reader is
/// behind), a reconnection, and a check every second go through the exact read instead.
async fn follow<T: Codec>(
    shared: Arc<Shared<T>>,
    mut connection: ConnectionManager,
    mut cursor: u64,
    block: Duration,
) {
    let batch_size = shared.options.batch.min(shared.options.max_len);
    let mut backoff = shared.redis.options().backoff();
    let mut failing = false;
    let mut exact = true;
    let mut audited = std::time::Instant::now();
    let mut last_id = String::from("0-0");
    loop {
        let audit = audited.elapsed() >= AUDIT_EVERY || (exact && last_id == "0-0");
        let attempt = shared
            .shutdown
            .unless(async {
                if audit {
                    // By ordinal, with a script: also notices a count that moved.
                    read::<T>(&mut connection, &shared.stream, Some(cursor), batch_size)
                        .await
                        .map(Fetched::Exact)
                } else if exact {
                    read_after_id::<T>(
                        &mut connection,
                        &shared.stream,
                        cursor,
                        &last_id,
                        batch_size,
                    )
                    .await
                    .map(Fetched::Exact)
                } else {
                    tail::<T>(&mut connection, &shared.stream, &last_id, batch_size, block)
                        .await
                        .map(Fetched::Tail)
                }
            })
            .await;
        let fetched = match attempt {
            None => return,
            Some(Ok(fetched)) => fetched,
            Some(Err(e)) => {
                if !failing {
                    tracing::warn!(stream = %shared.stream, error = %e, "lost the stream; retrying");
                    failing = true;
                    shared.connected.store(false, Ordering::Relaxed);
                }
                exact = true;
                shared.shutdown.unless(backoff.wait()).await;
                if needs_new_connection(&e) {
                    // This connection stopped answering: open another.
                    if let Some(Ok(fresh)) =
                        shared.shutdown.unless(shared.redis.dedicated(block)).await
                    {
                        connection = fresh;
                    }
                }
                continue;
            }
        };
        if failing {
            tracing::info!(stream = %shared.stream, "reading the stream again");
            failing = false;
            shared.connected.store(true, Ordering::Relaxed);
            backoff.reset();
        }
        let entries = match fetched {
            Fetched::Tail(entries) if entries.len() >= batch_size => {
                // Perhaps behind, and perhaps past a trimmed gap: number them exactly.
                exact = true;
                continue;
            }
            Fetched::Tail(entries) => entries,
            Fetched::Exact(batch) => {
                if audit {
                    audited = std::time::Instant::now();
                }
                if batch.added < cursor {
                    // The stream was deleted (or Redis lost it) and counts from the start again.
                    tracing::warn!(stream = %shared.stream, "the stream started again; positions go on from here");
                    shared.offset.fetch_add(cursor, Ordering::AcqRel);
                    cursor = 0;
                    // Entries up to `last_id` that survived are skipped below, not replayed.
                    if shared.ring.submit(Entry::Restarted).await.is_err() {
                        return;
                    }
                    continue;
                }
                if batch.after > cursor {
                    tracing::warn!(stream = %shared.stream, missed = batch.after - cursor, "entries were trimmed before they were read");
                    if shared
                        .ring
                        .submit(Entry::Lost(batch.after - cursor))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    cursor = batch.after;
                }
                exact = batch.entries.len() >= batch_size;
                if batch.entries.is_empty() {
                    last_id = batch.last_id;
                }
                let mut entries = batch.entries;
                // Entries already read under other numbers (an entry deleted with XDEL, or
                // a trim that kept fewer than `max_len`): skipped, and counted from here on.
                let seen = entries
                    .iter()
                    .take_while(|(id, _)| !is_after(id, &last_id))
                    .count();
                if seen > 0 {
                    tracing::warn!(stream = %shared.stream, seen, "the stream's count moved under this reader (XDEL, or a shorter MAXLEN); positions are corrected from here");
                    cursor += seen as u64;
                    entries.drain(..seen);
                }
                entries
            }
        };
        let offset = shared.offset.load(Ordering::Acquire);
        for (id, value) in entries {
            cursor += 1;
            last_id = id;
            let position = offset + cursor;
            if let Some(value) = value {
                let entry = Entry::Message(Message::new(Position::new(position), value));
                shared.taking.store(position, Ordering::SeqCst);
                if shared.ring.submit(entry).await.is_err() {
                    return;
                }
            } else {
                shared.undecodable.fetch_add(1, Ordering::Relaxed);
            }
            shared.read.store(position, Ordering::Release);
            shared.advanced.notify(usize::MAX);
        }
    }
}

/// Waits up to `block` for entries after `last_id`; at most `count`.
async fn tail<T: Codec>(
    connection: &mut ConnectionManager,
    stream: &str,
    last_id: &str,
    count: usize,
    block: Duration,
) -> Result<Vec<(String, Option<T>)>, RedisError> {
    let reply: Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(block.as_millis().max(1) as u64)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(last_id)
        .query_async(connection)
        .await?;
    let entries = match reply {
        Value::Nil => return Ok(Vec::new()),
        // RESP2: [[stream, entries]]; RESP3: {stream: entries}.
        Value::Array(mut streams) => match streams.pop() {
            Some(Value::Array(mut pair)) if pair.len() == 2 => pair.pop(),
            _ => None,
        },
        Value::Map(mut streams) => streams.pop().map(|(_, entries)| entries),
        _ => None,
    };
    let parsed = match entries {
        Some(Value::Array(entries)) => entries.into_iter().map(decode_entry).collect(),
        _ => None,
    };
    parsed.ok_or_else(|| RedisError::from((redis::ErrorKind::Parse, "unexpected answer to XREAD")))
}

/// Whether the stream id `id` comes after `other` (`ms-seq`, compared as numbers).
fn is_after(id: &str, other: &str) -> bool {
    fn parse(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parse(id) > parse(other)
}

type Fetch<T> = Pin<Box<dyn Future<Output = Result<Batch<T>, RedisError>> + Send>>;

/// Reads the batch after the ordinal `after` for a subscriber catching up.
/// By ordinal for the first batch, then after the id of the last entry read (cheaper for
/// Redis). Tries a few times, with backoff, before giving up (the subscriber is then told
/// `Interrupted`).
fn fetch<T: Codec>(shared: &Arc<Shared<T>>, after: u64, after_id: Option<String>) -> Fetch<T> {
    const ATTEMPTS: usize = 5;
    let shared = Arc::clone(shared);
    Box::pin(async move {
        let mut backoff = shared.redis.options().backoff();
        let mut attempt = 1;
        loop {
            let mut commands = shared.redis.commands();
            let batch = match &after_id {
                Some(id) => {
                    read_after_id(
                        &mut commands,
                        &shared.stream,
                        after,
                        id,
                        shared.options.batch,
                    )
                    .await
                }
                None => {
                    read(
                        &mut commands,
                        &shared.stream,
                        Some(after),
                        shared.options.batch,
                    )
                    .await
                }
            };
            match batch {
                Err(e) if attempt < ATTEMPTS && !shared.shutdown.is_triggered() => {
                    shared.redis.failed(&e);
                    attempt += 1;
                    backoff.wait().await;
                }
                Err(e) => {
                    shared.redis.failed(&e);
                    return Err(e);
                }
                Ok(batch) => return Ok(batch),
            }
        }
    })
}

/// A subscriber of a [`RedisQueueStore`]: every message from where it started, in order.
/// Dropping it deregisters it.
pub struct RedisQueueSubscriber<T> {
    /// The messages this process reads from the stream, from when it subscribed.
    live: QueueSubscriber<Entry<T>>,
    /// The position of the last message delivered (or skipped as already seen).
    after: u64,
    /// Catching up ends here: `live` has everything after it.
    target: u64,
    /// A read from the stream, while catching up.
    fetching: Option<Fetch<T>>,
    /// Caught-up messages not yet delivered.
    backlog: VecDeque<Item<T>>,
    /// Whether entries trimmed before the next batch were lost to this subscriber (not
    /// when it asked for the oldest retained).
    report_loss: bool,
    /// Whether no batch has been read yet (nothing delivered).
    first_batch: bool,
    /// What `Start::Now` meant when it subscribed.
    subscribed_at: u64,
    shared: Arc<Shared<T>>,
}

impl<T: Codec> Stream for RedisQueueSubscriber<T> {
    type Item = Item<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item<T>>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.backlog.pop_front() {
                return Poll::Ready(Some(item));
            }
            if let Some(fetching) = &mut this.fetching {
                let batch = match fetching.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(batch) => batch,
                };
                this.fetching = None;
                this.catch_up(batch);
                continue;
            }
            let entry = match Pin::new(&mut this.live).poll_next(cx) {
                Poll::Ready(Some(Ok(entry))) => entry,
                Poll::Ready(Some(Err(RecvError::Lagged { .. }))) => {
                    // The ring here moved on without this subscriber, but the stream
                    // still has what it missed (or says exactly how much it lost).
                    this.target = this.shared.taking.load(Ordering::SeqCst);
                    this.report_loss = true;
                    let offset = this.shared.offset.load(Ordering::Acquire);
                    this.fetching =
                        Some(fetch(&this.shared, this.after.saturating_sub(offset), None));
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match &**entry.value() {
                Entry::Message(message) if message.position().get() > this.after => {
                    this.after = message.position().get();
                    return Poll::Ready(Some(Ok(message.clone())));
                }
                Entry::Message(_) => {}
                Entry::Lost(missed) => {
                    return Poll::Ready(Some(Err(RecvError::Lagged { missed: *missed })));
                }
                Entry::Restarted => return Poll::Ready(Some(Err(RecvError::Interrupted))),
            }
        }
    }
}

impl<T: Codec> RedisQueueSubscriber<T> {
    /// Takes a batch read while catching up, and asks for the next if there is more.
    fn catch_up(&mut self, batch: Result<Batch<T>, RedisError>) {
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                // What lies between here and the live messages cannot be read now.
                tracing::warn!(stream = %self.shared.stream, error = %e, "could not catch up");
                self.backlog.push_back(Err(RecvError::Interrupted));
                return;
            }
        };
        let offset = self.shared.offset.load(Ordering::Acquire);
        let requested = self.after.saturating_sub(offset);
        if std::mem::take(&mut self.first_batch) && batch.added < requested {
            // A position the stream never reached: start from when it subscribed, as with
            // `Start::Now`.
            self.after = (offset + batch.added).min(self.subscribed_at);
            return;
        }
        if batch.after > requested && self.report_loss {
            self.backlog.push_back(Err(RecvError::Lagged {
                missed: batch.after - requested,
            }));
        }
        self.report_loss = true;
        let mut ordinal = batch.after;
        let more = !batch.entries.is_empty() && batch.added > batch.after;
        let mut last_id = None;
        for (id, value) in batch.entries {
            ordinal += 1;
            last_id = Some(id);
            let position = offset + ordinal;
            self.after = self.after.max(position);
            match value {
                Some(value) => self
                    .backlog
                    .push_back(Ok(Message::new(Position::new(position), value))),
                None => {
                    self.shared.undecodable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if more && self.after < self.target {
            self.fetching = Some(fetch(&self.shared, self.after - offset, last_id));
        }
    }
}

impl<T> fmt::Debug for RedisQueueSubscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueueSubscriber")
            .field("stream", &self.shared.stream)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}
