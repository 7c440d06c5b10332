//! `RedisQueueStore`: every message, in order, kept by a Redis stream.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::endpoint::Commands;
use event_listener::Event;
use futures_lite::Stream;
use redis::{RedisError, Script, Value};
use storecast::{
    Epoch, Item, Message, Overflow, Position, QueueStore, QueueSubscriber, Recv, RecvError,
    ResetReason, Start, Store, SubmitError, Subscriber, TryRecvError, TrySubmitError,
};

use crate::codec::Codec;
use crate::connection::{ConnectError, Redis};
use crate::runtime;
use crate::shutdown::Shutdown;
use crate::subscription::{Heard, Listener};
use crate::tail::{Tail, is_after};

/// The stream's epoch, read from its key (KEYS[2]) and made there, from the fresh epoch
/// given, if it has none: every script that numbers entries starts with it.
const EPOCH_LUA: &str = r"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  redis.call('SET', KEYS[2], ARGV[#ARGV])
  epoch = ARGV[#ARGV]
end
";

/// Adds an entry, announces its ordinal on the channel `<stream>:added` (so that every
/// process's reading task reads it at once), and answers {its ordinal (how many entries
/// the stream has ever had), the stream's epoch, 0}. ARGV: trim (`=` or `~`), max length,
/// data, seconds an idempotency key is kept, the announcement channel, a fresh epoch. On a
/// Redis Cluster the announcement is `SPUBLISH`ed (the channel is in the stream's slot).
///
/// With an idempotency key (KEYS[3]), an entry already added under it is not added again:
/// the answer is then {its ordinal, its epoch, 1}.
const ADD: &str = r"
if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  return redis.error_reply('storecast needs Redis 7.0 or later (XINFO STREAM entries-added)')
end
if KEYS[3] then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local ordinal, added_in = string.match(seen, '^(%d+) (.+)$')
    return {tonumber(ordinal), added_in, 1}
  end
end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[2], '*', 'data', ARGV[3])
EPOCH
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then
    if KEYS[3] then
      redis.call('SET', KEYS[3], info[i + 1] .. ' ' .. epoch, 'EX', ARGV[4])
    end
    redis.call('PUBLISH', ARGV[5], info[i + 1])
    return {info[i + 1], epoch, 0}
  end
end
return redis.error_reply('storecast needs Redis 7.0 or later (XINFO STREAM has no entries-added)')
";

/// Reads up to ARGV[2] entries after the ordinal ARGV[1] (-1: none, only the state).
/// Answers {entries-added, the ordinal read after, last-generated-id, entries, epoch,
/// anchor lost}: the entries have the ordinals after+1, after+2, ...; `after` is past the
/// requested one when entries were trimmed before they could be read.
///
/// Ordinals count from the stream's `entries-added`: the retained entries are the last
/// `length` ones added, so the first has ordinal `added - length + 1`.
///
/// ARGV[3] is the id of the newest entry the caller read (`0-0`: none). If the stream
/// still reaches back to it but no longer has it, Redis lost entries (a restart that
/// kept an older copy, a failover to a replica that was behind): `anchor lost` is 1.
const READ: &str = r"
if (redis.REDIS_VERSION_NUM or 0) < 0x070000 then
  return redis.error_reply('storecast needs Redis 7.0 or later (XINFO STREAM entries-added)')
end
EPOCH
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0, '0-0', {}, epoch, 0} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added, length, last, deleted
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then added = info[i + 1]
  elseif info[i] == 'length' then length = info[i + 1]
  elseif info[i] == 'last-generated-id' then last = info[i + 1]
  elseif info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
if added == nil then
  return redis.error_reply('storecast needs Redis 7.0 or later (XINFO STREAM has no entries-added)')
end
-- Whether the id a comes after the id b.
local function after_id(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local lost = 0
-- Gone, though older entries are there, and not deleted with XDEL (which Redis notes).
if ARGV[3] ~= '0-0' and #redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3]) == 0
    and #redis.call('XRANGE', KEYS[1], '-', ARGV[3], 'COUNT', 1) > 0
    and after_id(ARGV[3], deleted or '0-0') then
  lost = 1
end
local after = tonumber(ARGV[1])
if after < 0 or after > added then return {added, added, last, {}, epoch, lost} end
local first = added - length + 1
if after < first - 1 then after = first - 1 end
local skip = after - (first - 1)
local want = added - after
local count = math.min(tonumber(ARGV[2]), want)
if count <= 0 then return {added, after, last, {}, epoch, lost} end
local out = {}
if skip <= want then
  local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', skip + count)
  for i = skip + 1, #entries do out[#out + 1] = entries[i] end
else
  local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', want)
  for i = #entries, #entries - count + 1, -1 do out[#out + 1] = entries[i] end
end
return {added, after, last, out, epoch, lost}
";

/// After Redis lost entries: begins a new epoch unless another process did already (the
/// key no longer holds ARGV[1], the epoch the caller knew), and answers {the epoch, the
/// ordinal and the id of the newest entry still there at or before the id ARGV[2]} (the
/// newest entry the caller read that survived), where the caller's reading goes on from.
/// ARGV[3]: a fresh epoch.
const REANCHOR: &str = r"
local epoch = redis.call('GET', KEYS[2])
if (not epoch) or epoch == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[3])
  epoch = ARGV[3]
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {epoch, 0, '0-0'} end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local added
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then added = info[i + 1] end
end
local from = '0-0'
local kept = redis.call('XREVRANGE', KEYS[1], ARGV[2], '-', 'COUNT', 1)
if #kept > 0 then from = kept[1][1] end
local newer = #redis.call('XRANGE', KEYS[1], '(' .. from, '+')
return {epoch, added - newer, from}
";

/// The scripts, hashed once (they run with `EVALSHA`, falling back to `EVAL`).
static ADD_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&ADD.replace("EPOCH", EPOCH_LUA)));
static ADD_SHARDED_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        &ADD.replace("EPOCH", EPOCH_LUA)
            .replace("'PUBLISH'", "'SPUBLISH'"),
    )
});
static READ_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&READ.replace("EPOCH", EPOCH_LUA)));
static REANCHOR_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(REANCHOR));

/// How a [`RedisQueueStore`] keeps and hands out its messages.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    capacity: usize,
    overflow: Overflow,
    max_len: usize,
    exact_trim: bool,
    batch: usize,
    key_ttl: Duration,
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
            key_ttl: Duration::from_secs(3600),
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

    /// How long Redis remembers the idempotency key of a
    /// [`submit_with_key`](RedisQueueStore::submit_with_key) (default an hour, at least a
    /// second): a retry within it is not added again.
    pub fn key_ttl(mut self, ttl: Duration) -> Self {
        self.key_ttl = ttl.max(Duration::from_secs(1));
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
/// A message's position is its ordinal in the stream (1 for the first entry ever added,
/// and so on; Redis counts them as `entries-added`) with the stream's epoch, kept in the
/// key `<stream>:epoch` (made by the first process to need it; give it no expiry, and keep
/// it from eviction). Positions are the same in every process, so an SSE client can
/// resume with `Last-Event-ID` on any hub.
///
/// Other programs may add entries, and trim, as long as they keep at least `max_len`
/// entries (a `MAXLEN` no smaller than this store's), and should delete none with `XDEL`:
/// the numbering then drifts from Redis's until the reader notices (within a second), logs
/// a warning and numbers correctly from there.
///
/// # When Redis loses entries
///
/// Every read checks that Redis still has what this process read: its count has not gone
/// below what was numbered, and the newest entry read is still there (unless `XDEL`
/// removed it, which Redis notes). A crash that lost writes, or a failover to a replica
/// that was behind, fails that check: the process begins a new epoch (or takes the one
/// another process began first), its subscribers get
/// [`RecvError::Reset`] with [`ResetReason::Lost`] and go on with the entries after what
/// Redis kept, and a client that comes back with a position of the old epoch is told
/// [`ResetReason::OtherEpoch`] and gets the stream from its oldest entry. A submit that
/// Redis numbers below what this process had read begins the new epoch itself, so its
/// position is never one a client already holds for a lost message.
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
    /// The channel new entries are announced on: `<stream>:added` (on a Cluster
    /// `{<stream>}:added`, as every name derived from the stream).
    added: String,
    /// The key holding the stream's epoch: `<stream>:epoch` (`{<stream>}:epoch` on a
    /// Cluster).
    epoch_key: String,
    options: QueueOptions,
    /// This process's subscribers read here; the reading task fills it in stream order.
    ring: QueueStore<Entry<T>>,
    /// The epoch the reading task numbers entries in: the ordinals below count in it.
    epoch: AtomicU64,
    /// Odd while the reading task moves `epoch` and the ordinals below to a new epoch,
    /// and one more each time: readers of all four retry until they saw one generation.
    generation: AtomicU64,
    /// Ordinal of the newest entry the reading task has put into `ring`.
    read: AtomicU64,
    /// Ordinal of the newest entry the reading task has started to put into `ring` (it
    /// may be waiting for room). A subscriber that joins the ring reads this afterwards:
    /// whatever the ring had before it joined is at or below it.
    taking: AtomicU64,
    /// Notified when `read` moves (submitters wait to see their message arrive).
    advanced: Event,
    /// Ordinal of the newest entry submitted here: `Start::Now` begins after it.
    submitted: AtomicU64,
    connected: AtomicBool,
    undecodable: AtomicU64,
    /// How many times the reading task found that Redis had lost entries (or another
    /// process had begun a new epoch) and moved to the new epoch.
    resets: AtomicU64,
    /// New entries announced on `<stream>:added`: the reading task reads at once.
    announcements: Arc<Announcements>,
    shutdown: Shutdown,
}

/// What the reading task puts into the ring.
enum Entry<T> {
    Message(Message<T>),
    /// Entries trimmed from the stream before this process could read them.
    Lost(u64),
    /// The stream's epoch changed (Redis lost entries, or the stream was deleted): what
    /// follows is numbered in `epoch`, after the ordinal `after`.
    Reset {
        epoch: Epoch,
        after: u64,
    },
}

/// An epoch as Redis keeps it (its text), or `None` if the text is not one.
/// Whether a command that failed with `error` may have run on the server anyway: it was
/// sent, and the answer did not come (a timeout, or the connection dropped meanwhile).
fn may_have_run(error: &RedisError) -> bool {
    error.is_timeout()
        || error.is_connection_dropped()
        || (error.is_io_error() && !error.is_connection_refusal())
}

/// Whether `error` is the connection's or a Cluster's passing state (worth another
/// attempt), not the server's refusal.
fn is_transport(error: &RedisError) -> bool {
    error.is_timeout()
        || error.is_io_error()
        || error.is_connection_dropped()
        || crate::connection::is_passing(error)
}

fn parse_epoch(text: Option<&str>) -> Option<Epoch> {
    text?.parse().ok()
}

impl<T: Codec> RedisQueueStore<T> {
    /// Opens the queue on the stream `stream`; new subscribers start after the entries it
    /// has now. The stream's epoch is kept in the key `<stream>:epoch` (made now if the
    /// stream has none).
    pub async fn open(
        redis: &Redis,
        stream: &str,
        options: QueueOptions,
    ) -> Result<Self, ConnectError> {
        // Listening before the first read, so that nothing added after it goes unheard.
        let announcements = Arc::new(Announcements::default());
        let listener: Weak<dyn Listener> = Arc::downgrade(&announcements) as Weak<dyn Listener>;
        let added = redis.derived(stream, ":added")?;
        let epoch_key = redis.derived(stream, ":epoch")?;
        redis.listen(&added, listener).await?;
        let mut reader = redis.commands();
        let failed = |e: RedisError| redis.open_error(e);
        let state = read::<T>(&mut reader, stream, &epoch_key, None, 0, NO_ENTRY)
            .await
            .map_err(failed)?;
        let (epoch, cursor) = match parse_epoch(state.epoch.as_deref()) {
            Some(epoch) => (epoch, state.after),
            // The key holds something else: begin a proper epoch.
            None => {
                let garbage = state.epoch.unwrap_or_default();
                let (epoch, after, _) =
                    reanchor(&mut reader, stream, &epoch_key, &garbage, &state.last_id)
                        .await
                        .map_err(failed)?;
                (epoch, after)
            }
        };
        let shared = Arc::new(Shared {
            redis: redis.clone(),
            stream: stream.to_owned(),
            added,
            epoch_key,
            ring: QueueStore::with_overflow(options.capacity, options.overflow),
            options,
            epoch: AtomicU64::new(epoch.get()),
            generation: AtomicU64::new(0),
            read: AtomicU64::new(cursor),
            taking: AtomicU64::new(cursor),
            advanced: Event::new(),
            submitted: AtomicU64::new(0),
            connected: AtomicBool::new(true),
            undecodable: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            announcements,
            shutdown: Shutdown::default(),
        });
        // A Cluster's streams are in many slots, which one XREAD cannot cover.
        let tail = (!redis.is_cluster()).then(|| {
            redis.tails().follow(
                redis,
                stream,
                &shared.epoch_key,
                &epoch.to_string(),
                &state.last_id,
            )
        });
        let reading = Reading {
            tail,
            cursor,
            epoch,
            last_id: state.last_id,
            anchor: None,
        };
        runtime::spawn(follow(Arc::clone(&shared), reading));
        Ok(RedisQueueStore {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// Adds `value` to the stream and returns its position once this process's
    /// subscribers can read it. Under [`Overflow::Wait`] it first waits until they have
    /// room.
    ///
    /// A closed store hands the value back in [`SubmitError::Closed`]; Redis away or
    /// refusing, in [`SubmitError::Unavailable`] (not added). When the command was sent
    /// but no answer came within the response timeout (Redis busy, or the connection
    /// dropped meanwhile), the entry may have been added or not:
    /// [`SubmitError::OutcomeUnknown`]. Use
    /// [`submit_with_key`](RedisQueueStore::submit_with_key) where a retry must never add
    /// a message twice.
    pub async fn submit(&self, value: T) -> Result<Position, SubmitError<T>> {
        self.add(value, None).await.map(|(position, _)| position)
    }

    /// [`submit`](RedisQueueStore::submit) with an idempotency key: however many times a
    /// message is submitted under the same key (within the store's
    /// [`key_ttl`](QueueOptions::key_ttl), by any process), the stream gets it once, and
    /// every submit returns the position it got the first time. A submit whose outcome
    /// is unknown is retried under the same key by the store itself (a few times, within
    /// about three response timeouts), and a caller can retry safely too: a client that
    /// got no answer publishes again with the same key.
    ///
    /// The key lives in Redis as `<stream>:key:<key>` (`{<stream>}:key:<key>` on a
    /// Cluster); give each message its own (a UUID,
    /// or a client's request id).
    ///
    /// ```no_run
    /// use storecast_redis::{QueueOptions, Redis};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = Redis::connect("redis://127.0.0.1:6379").await?;
    /// let orders = redis.queue_store::<String>("orders", QueueOptions::default()).await?;
    /// let (first, added) = orders.submit_with_key("order 7".into(), "request-7").await?;
    /// let (again, added_again) = orders.submit_with_key("order 7".into(), "request-7").await?;
    /// assert_eq!((first, added, added_again), (again, true, false)); // added once
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Returns the position, and whether this call added the message (`false`: an earlier
    /// submit under the key did).
    pub async fn submit_with_key(
        &self,
        value: T,
        key: &str,
    ) -> Result<(Position, bool), SubmitError<T>> {
        self.add(value, Some(key)).await
    }

    async fn add(&self, value: T, key: Option<&str>) -> Result<(Position, bool), SubmitError<T>> {
        let shared = &*self.handle.shared;
        if shared.shutdown.is_triggered() {
            return Err(SubmitError::Closed(value));
        }
        if shared.options.overflow == Overflow::Wait && shared.ring.room().await.is_err() {
            return Err(SubmitError::Closed(value));
        }
        let trim = if shared.options.exact_trim { "=" } else { "~" };
        let mut commands = shared.redis.commands();
        // What this process had read before the entry existed (see below).
        let (epoch_before, _, _, read_before) = shared.numbering();
        let generation = shared.generation.load(Ordering::SeqCst);
        let key = key.map(|key| {
            shared
                .redis
                .derived(&shared.stream, &format!(":key:{key}"))
                .unwrap_or_else(|_| format!("{}:key:{key}", shared.stream))
        });
        let encoded = value.encode();
        let mut backoff = shared.redis.options().backoff();
        let mut maybe_added = false;
        // Without a key one attempt: another could add the message twice.
        let attempts = if key.is_some() { 4 } else { 1 };
        let mut attempt = 0;
        let (ordinal, epoch, again) = loop {
            attempt += 1;
            let script = if shared.redis.is_cluster() {
                &*ADD_SHARDED_SCRIPT
            } else {
                &*ADD_SCRIPT
            };
            let mut invocation = script.key(&shared.stream);
            invocation.key(&shared.epoch_key);
            if let Some(key) = &key {
                invocation.key(key);
            }
            let added: Result<(u64, String, u8), RedisError> = invocation
                .arg(trim)
                .arg(shared.options.max_len)
                .arg(encoded.as_ref())
                .arg(shared.options.key_ttl.as_secs())
                .arg(&shared.added)
                .arg(Epoch::random().to_string())
                .invoke_async(&mut commands)
                .await;
            match added {
                Ok((ordinal, epoch, again)) => break (ordinal, epoch, again == 1),
                Err(e) => {
                    tracing::warn!(stream = %shared.stream, error = %e, "could not add to the stream");
                    shared.redis.failed(&e);
                    maybe_added |= may_have_run(&e);
                    if attempt >= attempts || !is_transport(&e) || shared.shutdown.is_triggered() {
                        drop(encoded);
                        return Err(if maybe_added {
                            SubmitError::OutcomeUnknown(value)
                        } else {
                            SubmitError::Unavailable(value)
                        });
                    }
                    backoff.wait().await;
                    commands = shared.redis.commands();
                }
            }
        };
        drop(encoded);
        // The key holds something that is not an epoch: the reading task begins a proper
        // one soon; until then the entry counts in the epoch it reads in.
        let mut epoch = parse_epoch(Some(&epoch)).unwrap_or_else(|| shared.epoch());
        // (A message added before under its key was numbered then: its ordinal says nothing
        // of a loss now.)
        if !again && epoch == epoch_before && ordinal <= read_before {
            // Redis gave the new entry an ordinal this process had read before the entry
            // existed: it lost entries (a crash, a failover) and nobody has noticed yet. The new epoch
            // begins now, so that no client is handed a position another client holds
            // for a message that is gone; the reading task follows.
            match reanchor(
                &mut commands,
                &shared.stream,
                &shared.epoch_key,
                &epoch.to_string(),
                NO_ENTRY,
            )
            .await
            {
                Ok((new, _, _)) => epoch = new,
                Err(e) => {
                    tracing::warn!(stream = %shared.stream, error = %e, "could not begin the stream's new epoch");
                    shared.redis.failed(&e);
                }
            }
        }
        if epoch == shared.epoch() {
            shared.submitted.fetch_max(ordinal, Ordering::SeqCst);
            if shared.generation.load(Ordering::SeqCst) != generation {
                // The reading task moved epoch meanwhile: this ordinal may be of the old
                // one. `Start::Now` then goes by what was read alone.
                shared.submitted.store(0, Ordering::SeqCst);
            }
        }
        // It is in the stream: wait (a while) for the reading task to hand it to this
        // process's subscribers, so that a submit is followed by its delivery here.
        let arrived = || {
            shared.shutdown.is_triggered()
                || (shared.epoch() == epoch && shared.read.load(Ordering::Acquire) >= ordinal)
        };
        let arriving = async {
            loop {
                if arrived() {
                    return;
                }
                let listener = shared.advanced.listen();
                if arrived() {
                    return;
                }
                listener.await;
            }
        };
        runtime::timeout(shared.redis.options().response_timeout_value(), arriving).await;
        Ok((Position::new(epoch, ordinal), !again))
    }
}

impl<T> RedisQueueStore<T> {
    /// The stream's key.
    pub fn stream(&self) -> &str {
        &self.handle.shared.stream
    }

    /// The epoch this process numbers the stream's entries in: the same in every process
    /// (kept in Redis), and new whenever Redis is found to have lost entries.
    pub fn epoch(&self) -> Epoch {
        self.handle.shared.epoch()
    }

    /// The position of the newest message this process has read from the stream.
    pub fn last_position(&self) -> Position {
        let shared = &self.handle.shared;
        Position::new(shared.epoch(), shared.read.load(Ordering::Acquire))
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

    /// How many times this process found that Redis had lost entries (or that another
    /// process had found so) and moved to a new epoch, telling its subscribers.
    pub fn resets(&self) -> u64 {
        self.handle.shared.resets.load(Ordering::Relaxed)
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
        let (epoch, taken, submitted, read) = shared.numbering();
        let now = read.max(submitted);
        let known = taken.max(submitted);
        let (after, catch_up_from, resume) = match start {
            Start::Now => (now, None, None),
            Start::Oldest => (0, Some(0), None),
            // Of this epoch, and among what the ring will still hand out.
            Start::After(p) if p.epoch() == epoch && (taken..=known).contains(&p.offset()) => {
                (p.offset(), None, None)
            }
            // Behind what this process has read, ahead of it (another process may have
            // read further, or the position is not the stream's at all), or of another
            // epoch (this process may not know the newest yet): Redis says.
            Start::After(p) => (p.offset(), Some(p.offset()), Some(p)),
        };
        RedisQueueSubscriber {
            live,
            epoch,
            after,
            target: taken,
            fetching: catch_up_from.map(|from| fetch(shared, from, None)),
            backlog: VecDeque::new(),
            report_loss: start != Start::Oldest,
            resume,
            shared: Arc::clone(shared),
        }
    }

    fn close(&self) {
        self.handle.shared.stop();
    }

    fn is_closed(&self) -> bool {
        self.handle.shared.shutdown.is_triggered()
    }

    fn closed(&self) -> impl Future<Output = ()> + Send {
        self.handle.shared.shutdown.wait()
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
            .field("epoch", &self.epoch())
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
            let listener: Weak<dyn Listener> =
                Arc::downgrade(&self.announcements) as Weak<dyn Listener>;
            self.redis.stop_listening(&self.added, &listener);
        }
        self.ring.close();
    }

    fn epoch(&self) -> Epoch {
        Epoch::new(self.epoch.load(Ordering::Acquire))
    }

    /// The epoch and, in it, the ordinals taking, submitted and read, never torn by a
    /// move to another epoch.
    fn numbering(&self) -> (Epoch, u64, u64, u64) {
        loop {
            let before = self.generation.load(Ordering::SeqCst);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let numbering = (
                self.epoch(),
                self.taking.load(Ordering::SeqCst),
                self.submitted.load(Ordering::SeqCst),
                self.read.load(Ordering::SeqCst),
            );
            if self.generation.load(Ordering::SeqCst) == before {
                return numbering;
            }
        }
    }
}

/// The id that stands for "no entry read yet".
const NO_ENTRY: &str = "0-0";

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
    /// The text of the stream's epoch key (`None`: it has none).
    epoch: Option<String>,
    /// The newest entry the reader had read is gone although the stream still reaches
    /// back to it: Redis lost entries.
    anchor_lost: bool,
}

/// Reads up to `count` entries after the ordinal `after` (`None`: none, only the state),
/// and whether `anchor` (the id of the newest entry the caller read) was lost.
async fn read<T: Codec>(
    connection: &mut Commands,
    stream: &str,
    epoch_key: &str,
    after: Option<u64>,
    count: usize,
    anchor: &str,
) -> Result<Batch<T>, RedisError> {
    let reply: Value = READ_SCRIPT
        .key(stream)
        .key(epoch_key)
        .arg(after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX)))
        .arg(count.max(1))
        .arg(anchor)
        .arg(Epoch::random().to_string())
        .invoke_async(connection)
        .await?;
    parse_batch(reply).ok_or_else(|| {
        RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected answer to the stream read script",
        ))
    })
}

/// Begins a new epoch after Redis lost entries, unless the key no longer holds `known`
/// (another process began one already: that one is taken); answers the epoch, and the
/// ordinal and id of the newest entry still there at or before `last_id`, where reading
/// goes on.
async fn reanchor(
    connection: &mut Commands,
    stream: &str,
    epoch_key: &str,
    known: &str,
    last_id: &str,
) -> Result<(Epoch, u64, String), RedisError> {
    let (epoch, after, from): (String, u64, String) = REANCHOR_SCRIPT
        .key(stream)
        .key(epoch_key)
        .arg(known)
        .arg(last_id)
        .arg(Epoch::random().to_string())
        .invoke_async(connection)
        .await?;
    let epoch = parse_epoch(Some(&epoch)).ok_or_else(|| {
        RedisError::from((
            redis::ErrorKind::Parse,
            "the stream's epoch key holds something that is not an epoch",
        ))
    })?;
    Ok((epoch, after, from))
}

/// What an exact read learns of the stream besides its entries.
struct Counters {
    /// The text of the stream's epoch key (`None`: it has none).
    epoch: Option<String>,
    /// The stream's `entries-added`.
    added: u64,
    /// How many entries it holds.
    length: u64,
    /// Its newest id.
    last_id: String,
    /// The anchor (the newest entry the reader read) is gone while older entries are
    /// there: Redis lost entries.
    anchor_lost: bool,
}

/// Adds to `pipe` the commands [`counters`] reads: the epoch, `XINFO STREAM`, and whether
/// the stream still has `anchor` and anything up to it.
fn ask_counters(pipe: &mut redis::Pipeline, stream: &str, epoch_key: &str, anchor: &str) {
    pipe.cmd("GET")
        .arg(epoch_key)
        .cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .cmd("XRANGE")
        .arg(stream)
        .arg(anchor)
        .arg(anchor)
        .cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg(anchor)
        .arg("COUNT")
        .arg(1);
}

fn unexpected_answer() -> RedisError {
    RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected answer to XINFO STREAM and XRANGE",
    ))
}

/// Reads the answers to [`ask_counters`].
fn counters(
    epoch: Option<String>,
    info: Value,
    anchor: &str,
    at_anchor: Value,
    up_to_anchor: Value,
) -> Result<Counters, RedisError> {
    let fields: Vec<(Value, Value)> = match info {
        Value::Array(flat) => {
            let mut flat = flat.into_iter();
            std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
        }
        Value::Map(pairs) => pairs,
        _ => return Err(unexpected_answer()),
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
        .ok_or_else(unexpected_answer)?;
    let length = field(b"length")
        .and_then(integer)
        .ok_or_else(unexpected_answer)?;
    let last_id = match field(b"last-generated-id") {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(id)) => id.clone(),
        _ => return Err(unexpected_answer()),
    };
    let deleted = match field(b"max-deleted-entry-id") {
        Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Some(Value::SimpleString(id)) => id.clone(),
        _ => String::from(NO_ENTRY),
    };
    let empty = |value: &Value| matches!(value, Value::Array(entries) if entries.is_empty());
    Ok(Counters {
        epoch,
        added,
        length,
        last_id,
        // Gone, though older entries are there, and not deleted with XDEL (which Redis
        // notes as the largest deleted id).
        anchor_lost: empty(&at_anchor) && !empty(&up_to_anchor) && is_after(anchor, &deleted),
    })
}

/// Reads up to `count` entries after the entry `last_id`, whose ordinal is `cursor`,
/// together with the stream's counters and epoch in one `MULTI` (no script, and no work
/// for Redis beyond the entries themselves). Exact when entries are only ever trimmed: a
/// gap shows as the first retained ordinal being past the cursor. `anchor` (the newest
/// entry the caller read, or [`NO_ENTRY`]) is checked as in the `READ` script.
async fn read_after_id<T: Codec>(
    connection: &mut Commands,
    stream: &str,
    epoch_key: &str,
    cursor: u64,
    last_id: &str,
    anchor: &str,
    count: usize,
) -> Result<Batch<T>, RedisError> {
    let mut pipe = redis::pipe();
    ask_counters(pipe.atomic(), stream, epoch_key, anchor);
    pipe.cmd("XRANGE")
        .arg(stream)
        .arg(format!("({last_id}"))
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1));
    let answer: Result<(Option<String>, Value, Value, Value, Value), RedisError> =
        pipe.query_async(connection).await;
    let (epoch, info, at, up_to, entries) = match answer {
        Ok(answer) => answer,
        // There is no stream (yet, or any more): the script says so, with the epoch.
        Err(e) if e.to_string().contains("no such key") => {
            return read(connection, stream, epoch_key, Some(cursor), count, anchor).await;
        }
        Err(e) => return Err(e),
    };
    let counters = counters(epoch, info, anchor, at, up_to)?;
    let Value::Array(entries) = entries else {
        return Err(unexpected_answer());
    };
    let entries = entries
        .into_iter()
        .map(decode_entry)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(unexpected_answer)?;
    // Entries before the first retained one were trimmed.
    let first_retained = counters.added + 1 - counters.length.min(counters.added);
    Ok(Batch {
        added: counters.added,
        after: cursor.max(first_retained - 1),
        last_id: counters.last_id,
        entries,
        epoch: counters.epoch,
        anchor_lost: counters.anchor_lost,
    })
}

fn parse_batch<T: Codec>(reply: Value) -> Option<Batch<T>> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let [added, after, last_id, entries, epoch, lost]: [Value; 6] = parts.try_into().ok()?;
    let text = |value: Value| match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    };
    let Value::Array(entries) = entries else {
        return None;
    };
    let entries = entries
        .into_iter()
        .map(decode_entry)
        .collect::<Option<_>>()?;
    Some(Batch {
        added: integer(&added)?,
        after: integer(&after)?,
        last_id: text(last_id)?,
        entries,
        epoch: Some(text(epoch)?),
        anchor_lost: integer(&lost)? == 1,
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

/// How often a reading task that keeps getting entries checks its count of the stream
/// with an exact read (an idle one is audited by its reader; see `tail`).
const AUDIT_EVERY: Duration = Duration::from_secs(1);

/// What one step of the reading task brought.
enum Fetched<T> {
    /// An exact read by ordinal (`READ`) or after an id (`MULTI`): the stream's counters
    /// and epoch, and the entries after the cursor, gaps accounted for.
    Exact(Batch<T>),
    /// Caught up, it was told to read again: an entry was announced, or the shared reader
    /// saw one (added by another program), lost Redis, or found the epoch key changed;
    /// or (`true`, on a Cluster) it is time to look for entries other programs added.
    Woken(bool),
}

/// On a Cluster, the longest a caught-up reading task goes without looking at its stream
/// for entries other programs added with a plain `XADD` (the interval doubles from the
/// health-check interval each time it finds none).
const LONGEST_POLL: Duration = Duration::from_secs(60);

/// Announcements of new entries on the channel `<stream>:added`, heard on the shared
/// subscription.
#[derive(Default)]
struct Announcements {
    /// The ordinal announced last (entries-added, in whatever epoch).
    newest: AtomicU64,
    /// Announcements may have been missed (the subscription was away), or one did not
    /// parse: the reading task reads anyway.
    unsure: AtomicBool,
    event: Event,
}

impl Announcements {
    /// Resolves once an entry after `cursor` was announced (or one may have been).
    async fn heard(&self, cursor: u64) {
        let news = || {
            self.unsure.swap(false, Ordering::SeqCst) || self.newest.load(Ordering::SeqCst) > cursor
        };
        loop {
            if news() {
                return;
            }
            let listener = self.event.listen();
            if news() {
                return;
            }
            listener.await;
        }
    }
}

impl Listener for Announcements {
    fn heard(&self, batch: &[Heard<'_>]) {
        let newest = batch.iter().rev().find_map(|heard| match heard {
            Heard::Message(payload) => Some(
                std::str::from_utf8(payload)
                    .ok()
                    .and_then(|text| text.parse::<u64>().ok()),
            ),
            Heard::Key { .. } => None,
        });
        match newest {
            Some(Some(ordinal)) => self.newest.store(ordinal, Ordering::SeqCst),
            Some(None) => self.unsure.store(true, Ordering::SeqCst),
            None => return,
        }
        self.event.notify(usize::MAX);
    }

    fn lost(&self) {}

    /// Announcements made while the subscription was away are gone: read anyway.
    fn resubscribed(self: Arc<Self>) {
        self.unsure.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }
}

/// Where the reading task is in the stream.
struct Reading {
    /// This stream's place with the shared reader of its `Redis` handle (none on a
    /// Cluster, whose streams are read only when announced, or every health-check
    /// interval).
    tail: Option<Tail>,
    /// The ordinal of the last entry read (in `epoch`).
    cursor: u64,
    /// The epoch the task numbers entries in.
    epoch: Epoch,
    /// The id reading goes on after (the last entry read, or the stream's newest id).
    last_id: String,
    /// The id of the newest entry actually read: if Redis no longer has it while it has
    /// older ones, Redis lost entries.
    anchor: Option<String>,
}

/// The reading task: follows the stream from the ordinal `cursor`, filling the ring in
/// order; retries with backoff while Redis is away.
///
/// Every read is exact: after the id of the last entry read, with the stream's counters
/// and epoch in the same `MULTI` (a gap shows as the first retained ordinal being past the
/// cursor), or, once a second while entries keep coming, by ordinal with a script. Caught
/// up, it waits to be told to read again: by the announcement the add script publishes
/// for each new entry (heard on the shared subscription), or by the shared reader of its
/// `Redis` handle, which watches for entries other programs add with `XADD` (see `tail`).
/// Its reads run on the shared command connection: the task holds no connection of its
/// own, and costs Redis nothing while nothing is added.
///
/// Every exact read also brings the stream's epoch, and tells whether Redis lost entries
/// this task had read: its count went below the cursor, its newest entry read is gone, or
/// it holds fewer entries than were numbered. Then the task begins a new epoch (or takes
/// the one another process began) and tells this process's subscribers.
async fn follow<T: Codec>(shared: Arc<Shared<T>>, mut at: Reading) {
    // Under a lossy policy a batch fits in half the ring, so that subscribers waiting
    // when it is put in are not overrun by the rest of it before they can read.
    let lossy_limit = match shared.options.overflow {
        Overflow::Wait => usize::MAX,
        _ => (shared.options.capacity / 2).max(1),
    };
    let batch_size = shared
        .options
        .batch
        .min(shared.options.max_len)
        .min(lossy_limit);
    let mut backoff = shared.redis.options().backoff();
    let mut failing = false;
    let mut exact = true;
    let mut audited = std::time::Instant::now();
    let base_poll = shared.redis.options().health_check_value();
    let mut poll = base_poll;
    let mut polled = false;
    loop {
        let audit = audited.elapsed() >= AUDIT_EVERY;
        let anchor = at.anchor.as_deref().unwrap_or(NO_ENTRY);
        let mut commands = shared.redis.commands();
        let attempt = shared
            .shutdown
            .unless(async {
                if audit {
                    // By ordinal, with a script: also notices a count that moved.
                    read::<T>(
                        &mut commands,
                        &shared.stream,
                        &shared.epoch_key,
                        Some(at.cursor),
                        batch_size,
                        anchor,
                    )
                    .await
                    .map(Fetched::Exact)
                } else if exact {
                    read_after_id::<T>(
                        &mut commands,
                        &shared.stream,
                        &shared.epoch_key,
                        at.cursor,
                        &at.last_id,
                        anchor,
                        batch_size,
                    )
                    .await
                    .map(Fetched::Exact)
                } else {
                    let epoch = at.epoch.to_string();
                    let announced = async {
                        shared.announcements.heard(at.cursor).await;
                        false
                    };
                    let by_poll = futures_lite::future::or(announced, async {
                        match &mut at.tail {
                            Some(tail) => {
                                tail.next(&at.last_id, &epoch).await;
                                false
                            }
                            // On a Cluster, entries other programs add are looked for
                            // every health-check interval, less often while none come.
                            None => {
                                runtime::sleep(poll).await;
                                true
                            }
                        }
                    })
                    .await;
                    Ok(Fetched::Woken(by_poll))
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
                // A command connection that stopped answering is replaced.
                shared.redis.failed(&e);
                shared.shutdown.unless(backoff.wait()).await;
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
            Fetched::Woken(by_poll) => {
                polled = by_poll;
                exact = true;
                continue;
            }
            Fetched::Exact(batch) => {
                if audit {
                    audited = std::time::Instant::now();
                }
                if !batch.entries.is_empty() {
                    poll = base_poll;
                } else if std::mem::take(&mut polled) {
                    poll = (poll * 2).min(LONGEST_POLL.max(base_poll));
                }
                let full = batch.entries.len() >= batch_size;
                let numbered = batch.after + batch.entries.len() as u64;
                let lost = batch.added < at.cursor
                    || batch.anchor_lost
                    || (!full && numbered > batch.added);
                if let Some(known) = at.moved_on(batch.epoch.as_deref(), lost) {
                    if !shared.move_on(&mut at, &known, lost, &mut backoff).await {
                        return;
                    }
                    exact = true;
                    continue;
                }
                if batch.after > at.cursor {
                    tracing::warn!(stream = %shared.stream, missed = batch.after - at.cursor, "entries were trimmed before they were read");
                    if shared
                        .ring
                        .submit(Entry::Lost(batch.after - at.cursor))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    at.cursor = batch.after;
                }
                exact = full;
                if batch.entries.is_empty() {
                    at.last_id = batch.last_id;
                }
                let mut entries = batch.entries;
                // Entries already read under other numbers (an entry deleted with XDEL, or
                // a trim that kept fewer than `max_len`): skipped, and counted from here on.
                let seen = entries
                    .iter()
                    .take_while(|(id, _)| !is_after(id, &at.last_id))
                    .count();
                if seen > 0 {
                    tracing::warn!(stream = %shared.stream, seen, "the stream's count moved under this reader (XDEL, or a shorter MAXLEN); positions are corrected from here");
                    at.cursor += seen as u64;
                    entries.drain(..seen);
                }
                entries
            }
        };
        // Subscribers are woken once for the whole batch (or before the task waits for
        // room), not once for each entry.
        let mut batch = shared.ring.batch();
        for (id, value) in entries {
            at.cursor += 1;
            at.anchor = Some(id.clone());
            at.last_id = id;
            let ordinal = at.cursor;
            if let Some(value) = value {
                let position = Position::new(at.epoch, ordinal);
                let entry = Entry::Message(Message::new(position, value));
                shared.taking.store(ordinal, Ordering::SeqCst);
                match batch.try_submit(entry) {
                    Ok(_) => {}
                    Err(TrySubmitError::Full(entry)) => {
                        batch.flush();
                        if shared.ring.submit(entry).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            } else {
                shared.undecodable.fetch_add(1, Ordering::Relaxed);
            }
            shared.read.store(ordinal, Ordering::Release);
            shared.advanced.notify(usize::MAX);
        }
    }
}

impl Reading {
    /// Whether the reading task must move to another epoch: Redis `lost` entries, or the
    /// stream's epoch key (`epoch`) no longer holds the one it reads in. Then: the epoch
    /// text to hand to [`reanchor`] as the one known (a key that holds no epoch is
    /// replaced, whatever this task knew).
    fn moved_on(&self, epoch: Option<&str>, lost: bool) -> Option<String> {
        let parsed = parse_epoch(epoch);
        if !lost && parsed == Some(self.epoch) {
            return None;
        }
        Some(match epoch {
            Some(text) if parsed.is_none() => text.to_owned(),
            _ => self.epoch.to_string(),
        })
    }
}

impl<T> Shared<T> {
    /// Moves the reading task to the stream's new epoch (beginning it if Redis `lost`
    /// entries and nobody did yet), going on after the entry it read last; subscribers
    /// are told. False once the store is closed.
    async fn move_on(
        &self,
        at: &mut Reading,
        known: &str,
        lost: bool,
        backoff: &mut runtime::Backoff,
    ) -> bool {
        let mut commands = self.redis.commands();
        let moved = reanchor(
            &mut commands,
            &self.stream,
            &self.epoch_key,
            known,
            &at.last_id,
        );
        let (epoch, after, from) = match self.shutdown.unless(moved).await {
            None => return false,
            Some(Ok(moved)) => moved,
            Some(Err(e)) => {
                tracing::warn!(stream = %self.stream, error = %e, "could not move to the stream's new epoch; retrying");
                self.redis.failed(&e);
                return self.shutdown.unless(backoff.wait()).await.is_some();
            }
        };
        if lost {
            tracing::warn!(stream = %self.stream, %epoch, "Redis lost entries this process had read; a new epoch begins");
        } else {
            tracing::warn!(stream = %self.stream, %epoch, "the stream's epoch changed (another process found entries lost)");
        }
        at.epoch = epoch;
        at.cursor = after;
        // Entries added after the loss with ids below the one read last (a clock behind)
        // are read too.
        at.last_id = from;
        // The entry read last may be among those lost: nothing to check against until the
        // next one is read.
        at.anchor = None;
        self.resets.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.epoch.store(epoch.get(), Ordering::SeqCst);
        self.taking.store(after, Ordering::SeqCst);
        self.read.store(after, Ordering::SeqCst);
        self.submitted.store(0, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.advanced.notify(usize::MAX);
        self.ring
            .submit(Entry::Reset { epoch, after })
            .await
            .is_ok()
    }
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
            let (stream, epoch_key, batch) =
                (&shared.stream, &shared.epoch_key, shared.options.batch);
            let read = match &after_id {
                Some(id) => {
                    read_after_id(&mut commands, stream, epoch_key, after, id, NO_ENTRY, batch)
                        .await
                }
                None => {
                    read(
                        &mut commands,
                        stream,
                        epoch_key,
                        Some(after),
                        batch,
                        NO_ENTRY,
                    )
                    .await
                }
            };
            match read {
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
    /// The epoch `after` and `target` count in.
    epoch: Epoch,
    /// The ordinal of the last message delivered (or skipped as already seen).
    after: u64,
    /// Catching up ends here: `live` has everything after it.
    target: u64,
    /// A read from the stream, while catching up.
    fetching: Option<Fetch<T>>,
    /// Caught-up messages (and news) not yet delivered.
    backlog: VecDeque<Item<T>>,
    /// Whether entries trimmed before the next batch were lost to this subscriber (not
    /// when it asked for the oldest retained).
    report_loss: bool,
    /// The position a resuming subscriber gave, checked against the stream's epoch and
    /// count when the first batch comes.
    resume: Option<Position>,
    shared: Arc<Shared<T>>,
}

impl<T: Codec> RedisQueueSubscriber<T> {
    /// Waits for the next message: every entry in order, with news as `Err` (entries lost
    /// to trimming as [`RecvError::Lagged`], a loss in Redis as [`RecvError::Reset`], a
    /// read that failed as [`RecvError::Interrupted`]), and [`RecvError::Closed`] once
    /// the store is closed and everything is read.
    ///
    /// ```no_run
    /// use storecast::{RecvError, Store};
    /// use storecast_redis::{QueueOptions, Redis};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let redis = Redis::connect("redis://127.0.0.1:6379").await?;
    /// let orders = redis.queue_store::<String>("orders", QueueOptions::default()).await?;
    /// let mut subscriber = orders.subscribe();
    /// loop {
    ///     match subscriber.recv().await {
    ///         Ok(order) => println!("{}: {}", order.position(), *order),
    ///         Err(e) if e.ends_stream() => break,
    ///         Err(news) => eprintln!("{news}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv(&mut self) -> Recv<'_, Self> {
        Recv::new(self)
    }

    /// The next message if one is here already, without waiting:
    /// [`TryRecvError::Empty`] when none is (a subscriber catching up reads Redis in the
    /// background meanwhile), [`TryRecvError::Closed`] when none will come.
    pub fn try_recv(&mut self) -> Result<Message<T>, TryRecvError> {
        <Self as Subscriber>::try_recv(self)
    }

    /// [`recv`](RedisQueueSubscriber::recv) for a thread outside any async runtime (the
    /// store's tasks run on the runtime it was opened on): parks the thread until a
    /// message comes.
    pub fn recv_blocking(&mut self) -> Result<Message<T>, RecvError> {
        futures_lite::future::block_on(self.recv())
    }
}

/// `try_recv` is the provided one: a poll that does not wait.
impl<T: Codec> Subscriber for RedisQueueSubscriber<T> {
    type Value = T;
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
                    this.fetching = Some(fetch(&this.shared, this.after, None));
                    continue;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match &**entry.value() {
                // Numbered in an epoch this subscriber has left: the reading task's reset
                // comes next.
                Entry::Message(message) if message.position().epoch() != this.epoch => {}
                Entry::Message(message) if message.position().offset() > this.after => {
                    this.after = message.position().offset();
                    return Poll::Ready(Some(Ok(message.clone())));
                }
                Entry::Message(_) => {}
                Entry::Lost(missed) => {
                    return Poll::Ready(Some(Err(RecvError::Lagged { missed: *missed })));
                }
                Entry::Reset { epoch, after } if *epoch == this.epoch => {
                    // This subscriber is in that epoch already (a catch-up read found it
                    // first, and it was told then): it reads what lies between from Redis.
                    if this.after < *after {
                        this.target = *after;
                        this.fetching = Some(fetch(&this.shared, this.after, None));
                    }
                }
                Entry::Reset { epoch, after } => {
                    this.epoch = *epoch;
                    this.after = *after;
                    return Poll::Ready(Some(Err(RecvError::Reset {
                        reason: ResetReason::Lost,
                    })));
                }
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
        let epoch = parse_epoch(batch.epoch.as_deref());
        if let Some(asked) = self.resume.take() {
            // The first batch of a resume: is the position the client gave one of this
            // stream's, now?
            let reason = if epoch != Some(asked.epoch()) {
                Some(ResetReason::OtherEpoch)
            } else if batch.added < asked.offset() {
                Some(ResetReason::Ahead)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.backlog.push_back(Err(RecvError::Reset { reason }));
                self.restart_from_oldest(epoch);
                return;
            }
        } else if epoch.is_none() {
            // The epoch key holds no epoch: the reading task replaces it, and its reset
            // tells this subscriber where to go on.
            self.backlog.push_back(Err(RecvError::Interrupted));
            return;
        } else if epoch != Some(self.epoch) {
            // The stream began a new epoch while this subscriber caught up: what it
            // counted means nothing now. It is told, and reads the stream anew, never
            // skipping what it cannot place.
            self.backlog.push_back(Err(RecvError::Reset {
                reason: ResetReason::Lost,
            }));
            self.restart_from_oldest(epoch);
            return;
        }
        let epoch = epoch.expect("checked above");
        self.epoch = epoch;
        if batch.after > self.after && self.report_loss {
            self.backlog.push_back(Err(RecvError::Lagged {
                missed: batch.after - self.after,
            }));
        }
        self.report_loss = true;
        let mut ordinal = batch.after;
        let more = !batch.entries.is_empty() && batch.added > batch.after;
        let mut last_id = None;
        for (id, value) in batch.entries {
            ordinal += 1;
            last_id = Some(id);
            self.after = self.after.max(ordinal);
            match value {
                Some(value) => self
                    .backlog
                    .push_back(Ok(Message::new(Position::new(epoch, ordinal), value))),
                None => {
                    self.shared.undecodable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if more && self.after < self.target {
            self.fetching = Some(fetch(&self.shared, self.after, last_id));
        }
    }

    /// After a reset: everything the stream retains, numbered in `epoch`.
    fn restart_from_oldest(&mut self, epoch: Option<Epoch>) {
        self.epoch = epoch.unwrap_or(self.epoch);
        self.after = 0;
        self.report_loss = false;
        self.target = if Some(self.shared.epoch()) == epoch {
            self.shared.taking.load(Ordering::SeqCst)
        } else {
            // The reading task is still in another epoch: read until the stream's end;
            // its reset tells this subscriber where the live messages go on.
            u64::MAX
        };
        self.fetching = Some(fetch(&self.shared, 0, None));
    }
}

impl<T> fmt::Debug for RedisQueueSubscriber<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueueSubscriber")
            .field("stream", &self.shared.stream)
            .field("epoch", &self.epoch)
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}
