//! The listener's watch over its connections: header/idle timeouts, drain and kill, without a
//! timer per request.
//!
//! hyper's `header_read_timeout` (when hyper served the listeners) armed and cancelled a timer
//! for every request (about 2,000 instructions of a ~22,000-instruction cache hit, measured
//! with callgrind). Here each
//! connection instead keeps a [`Watch`]: the listener's coarse clock reading at its last sign of
//! life outside the handler (accepted, a handler finished, a response byte written) and the count
//! of requests in the handler. One sweeper per listener advances the clock every [`TICK`] and
//! closes connections that have been waiting for request headers longer than the timeout; a
//! request costs two relaxed stores and no timer. The price is precision: a silent connection
//! closes between `header_read_timeout` and `header_read_timeout + TICK` after its last
//! activity, never earlier.
//!
//! The same watch carries the drain: the listener orders every connection to stop (or, past
//! the grace period, to die) and wakes it, instead of each connection polling a channel on
//! every wake-up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

/// How often the sweeper looks at the connections; the header timeout's precision.
pub const TICK: Duration = Duration::from_secs(1);

/// What the listener asks of a connection.
const RUN: u8 = 0;
/// Waited too long for request headers: close unless a request is in the handler by now.
const EXPIRED: u8 = 1;
/// Shutdown: close if idle, otherwise finish the request in flight and close.
const STOP: u8 = 2;
/// Past the grace period: drop the connection, cancelling its handler.
const KILL: u8 = 3;

/// The listener's coarse clock: ticks since it started, advanced by the sweeper.
#[derive(Debug, Default)]
pub struct Clock(AtomicU32);

impl Clock {
    fn now(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One connection as its listener sees it; shared by the connection's task, its I/O and the
/// listener.
#[derive(Debug)]
pub struct Watch {
    clock: Arc<Clock>,
    /// Clock reading at the last activity outside the handler.
    active_at: AtomicU32,
    /// Requests in the handler.
    in_flight: AtomicUsize,
    /// A write is waiting for the client (its own timeout covers it).
    writing: AtomicBool,
    order: AtomicU8,
    waker: AtomicWaker,
}

impl Watch {
    /// Records activity now: the idle time starts over.
    pub fn touch(&self) {
        self.active_at.store(self.clock.now(), Ordering::Release);
    }

    pub fn set_writing(&self, writing: bool) {
        self.writing.store(writing, Ordering::Release);
    }

    /// Whether a write is waiting for the client.
    pub fn is_writing(&self) -> bool {
        self.writing.load(Ordering::Acquire)
    }

    /// Whether the listener ordered this connection to stop: its next answer is its last.
    pub fn is_stopping(&self) -> bool {
        self.order.load(Ordering::Acquire) >= STOP
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.is_writing()
    }

    fn order(&self, order: u8) {
        self.order.store(order, Ordering::Release);
        self.waker.wake();
    }
}

/// Counts a request in the handler for as long as it lives; leaving counts as activity.
pub struct InHandler(Arc<Watch>);

impl InHandler {
    pub fn enter(watch: &Arc<Watch>) -> InHandler {
        watch.in_flight.fetch_add(1, Ordering::AcqRel);
        InHandler(Arc::clone(watch))
    }
}

impl Drop for InHandler {
    fn drop(&mut self) {
        // Before the count drops: the sweeper never sees an idle connection with an old stamp
        // between the handler's end and the answer's first byte.
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every open connection of one listener.
#[derive(Debug, Default)]
pub struct Connections {
    clock: Arc<Clock>,
    open: Mutex<Vec<Weak<Watch>>>,
}

impl Connections {
    /// Registers a connection accepted now.
    pub fn watch(&self) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            clock: Arc::clone(&self.clock),
            active_at: AtomicU32::new(self.clock.now()),
            in_flight: AtomicUsize::new(0),
            writing: AtomicBool::new(false),
            order: AtomicU8::new(RUN),
            waker: AtomicWaker::new(),
        });
        self.lock().push(Arc::downgrade(&watch));
        watch
    }

    /// Advances the clock one tick and orders connections idle for more than `timeout` to
    /// close; forgets closed ones. A connection closes between `timeout` and `timeout + TICK`
    /// after its last activity.
    pub fn sweep(&self, timeout: Duration) {
        let limit = u32::try_from(timeout.as_nanos().div_ceil(TICK.as_nanos())).unwrap_or(u32::MAX);
        let now = self.clock.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.lock().retain(|weak| {
            let Some(watch) = weak.upgrade() else {
                return false;
            };
            // Idle first, then the stamp: a handler stamps before it leaves, so a connection
            // seen idle here shows that stamp. Stamped at tick s means active somewhere in
            // [s, s + 1): idle at least now - s - 1 ticks.
            let is_idle = watch.is_idle();
            let idle = now.wrapping_sub(watch.active_at.load(Ordering::Acquire));
            // Only from RUN: a drain's STOP or KILL is never overwritten.
            if is_idle
                && idle > limit
                && watch
                    .order
                    .compare_exchange(RUN, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                watch.waker.wake();
            }
            true
        });
    }

    /// Orders every connection to stop (drain) or, `kill`, to drop at once.
    pub fn order_all(&self, kill: bool) {
        for watch in self.lock().iter().filter_map(Weak::upgrade) {
            watch.order(if kill { KILL } else { STOP });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Watch>>> {
        // The list holds plain data: a panic elsewhere cannot leave it half-updated.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A served connection that obeys its watch: the connection future runs until it ends or the
/// listener orders it to close.
pub struct Supervised<C> {
    connection: Pin<Box<C>>,
    watch: Arc<Watch>,
    is_draining: bool,
}

impl<C> Supervised<C> {
    pub fn new(connection: C, watch: Arc<Watch>) -> Supervised<C> {
        Supervised {
            connection: Box::pin(connection),
            watch,
            is_draining: false,
        }
    }
}

impl<C: Future<Output = std::io::Result<()>>> Future for Supervised<C> {
    type Output = std::io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(result) = this.connection.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        // Registered before the order is read: an order given after this read wakes us.
        this.watch.waker.register(cx.waker());
        match this.watch.order.load(Ordering::Acquire) {
            RUN => Poll::Pending,
            // Still idle (no request, no answer being written): close.
            EXPIRED if this.watch.is_idle() => Poll::Ready(Ok(())),
            // A request arrived in time after all, or its answer is being written.
            EXPIRED => {
                let _ = this.watch.order.compare_exchange(
                    EXPIRED,
                    RUN,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                Poll::Pending
            }
            STOP if this.is_draining => Poll::Pending,
            STOP => {
                // Waiting for (the rest of) a request: close now. A request in the handler or
                // an answer being written finishes first.
                if this.watch.is_idle() {
                    return Poll::Ready(Ok(()));
                }
                // The connection sees the order itself (`Watch::is_stopping`): its answer
                // says `connection: close`, and it ends after writing it.
                this.is_draining = true;
                Poll::Pending
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}
