//! Durability: the background flusher, group commit, checkpoints and poisoning.
//!
//! Under `Always`, an append registers what it waits for and asks the [`Flusher`] to flush the
//! log. The flusher syncs everything written up to that moment (pending sealed segments,
//! then the active segment's new bytes) with one msync each, then completes every append
//! that is now covered. Appends that arrive during a flush are covered by the next one: many
//! concurrent appends share one flush. Under `Interval`, the flusher does the same on a
//! timer and appends never wait. Under `Never`, it only seals segments.
//!
//! After a flush the active segment's index is checkpointed (at most every
//! `checkpoint_interval`), so recovery scans only what was written since.
//!
//! A failed flush *poisons* the log: every waiting and future append fails with
//! [`Error::Poisoned`]. Nothing is retried: after a failed fsync the kernel may have dropped
//! the dirty pages, so a retry could report success for data that is gone.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::{FsyncPolicy, LogInner};
use crate::error::{Error, Result};
use crate::segment::SealedSegment;

pub(crate) type DurableCallback = Box<dyn FnOnce(Result<()>) + Send>;

/// Appends waiting to become durable, and how far durability has come.
pub(crate) struct DurableState {
    /// Every entry with an index below this is durable.
    pub durable_next: u64,
    pub waiters: Vec<(u64, DurableCallback)>,
    pub poisoned: Option<String>,
}

/// When a flush checkpoints the active segment's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checkpoint {
    /// If `checkpoint_interval` has passed (and the policy syncs at all).
    IfDue,
    /// Now (an explicit flush).
    Now,
    /// Now, marking the segment cleanly closed.
    Clean,
}

/// State of the flush in progress; its mutex is held while flushing.
pub(crate) struct FlushIo {
    /// First index of the active segment the flushed position below refers to.
    pub active_first_index: u64,
    /// Data position up to which the active segment is synced.
    pub active_flushed: usize,
    pub last_checkpoint: Option<Instant>,
    /// Appends counted at the previous flush's snapshot, how many it covered, and how long
    /// its sync took: the basis of the group-commit delay.
    pub appends_at_snapshot: u64,
    pub last_group: u64,
    pub last_sync: Duration,
}

impl LogInner {
    pub(crate) fn lock_flush_io(&self) -> MutexGuard<'_, FlushIo> {
        self.flush_io.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_durable(&self) -> MutexGuard<'_, DurableState> {
        self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn poisoned_error(&self, cause: &str) -> Error {
        Error::Poisoned {
            path: self.dir.clone(),
            cause: cause.to_string(),
        }
    }

    /// Fails if a flush failed before.
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        match &self.lock_durable().poisoned {
            Some(cause) => Err(self.poisoned_error(cause)),
            None => Ok(()),
        }
    }

    /// Records a failed flush: fails every waiter now and every append from now on.
    pub(crate) fn poison(&self, error: &Error) {
        tracing::error!(dir = %self.dir.display(), %error, "flush failed; the log is poisoned until reopened");
        let waiters = {
            let mut d = self.lock_durable();
            d.poisoned.get_or_insert_with(|| error.to_string());
            std::mem::take(&mut d.waiters)
        };
        self.durable_changed.notify_all();
        let cause = error.to_string();
        for (_, done) in waiters {
            done(Err(self.poisoned_error(&cause)));
        }
    }

    /// The cause, if a flush failed.
    pub(crate) fn poisoned(&self) -> Option<String> {
        self.lock_durable().poisoned.clone()
    }

    /// Under [`FsyncPolicy::Always`], the index before which every entry is known durable.
    pub(crate) fn durable_next(&self) -> Option<u64> {
        self.always().then(|| self.lock_durable().durable_next)
    }

    fn always(&self) -> bool {
        self.config.fsync == FsyncPolicy::Always
    }

    pub(crate) fn is_durable(&self, index: u64) -> bool {
        !self.always() || {
            let d = self.lock_durable();
            d.poisoned.is_none() && d.durable_next > index
        }
    }

    pub(crate) fn wait_durable(&self, index: u64) -> Result<()> {
        if !self.always() {
            return Ok(());
        }
        let mut d = self.lock_durable();
        loop {
            if let Some(cause) = &d.poisoned {
                return Err(self.poisoned_error(cause));
            }
            if d.durable_next > index {
                return Ok(());
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(self.closed_error());
            }
            d = self
                .durable_changed
                .wait(d)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(crate) fn on_durable(&self, index: u64, done: DurableCallback) {
        if !self.always() {
            return done(Ok(()));
        }
        let mut d = self.lock_durable();
        if let Some(cause) = d.poisoned.clone() {
            drop(d);
            return done(Err(self.poisoned_error(&cause)));
        }
        if d.durable_next > index {
            drop(d);
            return done(Ok(()));
        }
        if self.closed.load(Ordering::Acquire) {
            drop(d);
            return done(Err(self.closed_error()));
        }
        d.waiters.push((index, done));
    }

    /// Moves the durable mark (down too, after a truncation or reset) and completes waiters.
    pub(crate) fn set_durable(&self, next: u64) {
        let ready: Vec<_> = {
            let mut d = self.lock_durable();
            d.durable_next = next;
            let (ready, waiting) = std::mem::take(&mut d.waiters)
                .into_iter()
                .partition(|(index, _)| *index < next);
            d.waiters = waiting;
            ready
        };
        self.durable_changed.notify_all();
        for (_, done) in ready {
            done(Ok(()));
        }
    }

    /// Asks the flusher to flush this log soon (once per pending request).
    pub(crate) fn request_flush(self: &Arc<Self>) {
        if !self.flush_requested.swap(true, Ordering::AcqRel) {
            self.flusher.request(Arc::downgrade(self));
        }
    }

    /// Syncs everything written so far, finishes pending seals, advances durability and
    /// checkpoints the active index as `checkpoint` says.
    pub(crate) fn flush_now(&self, checkpoint: Checkpoint) -> Result<()> {
        let mut io = self.lock_flush_io();
        self.flush_locked(&mut io, checkpoint)
    }

    pub(crate) fn flush_locked(&self, io: &mut FlushIo, checkpoint: Checkpoint) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_poisoned()?;
        if checkpoint == Checkpoint::IfDue {
            self.gather_group(io);
        }
        let (target_next, target_end_offset, seals, map, end, active_first, index) = {
            let mut v = self.write_view();
            (
                v.next_index,
                v.next_offset,
                std::mem::take(&mut v.pending_seals),
                v.active.map.clone(),
                v.active.end_position(),
                v.active.meta.first_index,
                v.active.index.clone(),
            )
        };
        let appends = self.appends.load(Ordering::Acquire);
        io.last_group = appends - io.appends_at_snapshot;
        io.appends_at_snapshot = appends;
        let sync_started = Instant::now();
        if io.active_first_index != active_first {
            io.active_first_index = active_first;
            io.active_flushed = 0;
        }
        let synced = (|| {
            crate::fault::check(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
            #[cfg(test)]
            if self.fail_next_flush.swap(false, Ordering::SeqCst) {
                return Err(Error::io(
                    &self.dir,
                    std::io::Error::other("injected flush failure"),
                ));
            }
            for job in &seals {
                job.flush_data()?;
            }
            // A segment created by a roll is made durable here, off the append path,
            // before any of its data is reported durable.
            index
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sync_creation()?;
            if end > io.active_flushed {
                map.flush(io.active_flushed..end)
                    .map_err(|e| Error::io(&self.dir, e))?;
                io.active_flushed = end;
            }
            let mut sealed = Vec::with_capacity(seals.len());
            for job in seals {
                sealed.push(job.paths().clone());
                job.finish()?;
            }
            Ok(sealed)
        })();
        io.last_sync = sync_started.elapsed();
        let sealed = match synced {
            Ok(sealed) => sealed,
            Err(e) => {
                self.poison(&e);
                return Err(e);
            }
        };
        self.reopen_sealed(&sealed);
        if self.always() {
            let mut v = self.write_view();
            if target_next > v.readable_next && target_next <= v.next_index {
                v.readable_next = target_next;
                v.readable_end_offset = target_end_offset;
            }
        }
        if self.always() {
            let durable_next = self.lock_durable().durable_next;
            self.set_durable(target_next.max(durable_next));
        }

        let due = io
            .last_checkpoint
            .is_none_or(|at| at.elapsed() >= self.config.checkpoint_interval);
        let clean = checkpoint == Checkpoint::Clean;
        if checkpoint != Checkpoint::IfDue || (due && self.config.fsync != FsyncPolicy::Never) {
            let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
            let (tail, end) = {
                let v = self.read_view();
                if v.active.meta.first_index != active_first {
                    return Ok(()); // rolled meanwhile; the next flush checkpoints the new one
                }
                let covered =
                    (target_next.saturating_sub(active_first) as usize).min(v.active.entries.len());
                let from = index.persisted().min(covered);
                let end = v.active.entries[..covered]
                    .last()
                    .map_or(crate::segment::format::SEGMENT_HEADER_LEN, |e| {
                        e.end_position()
                    });
                (v.active.entries[from..covered].to_vec(), end as u64)
            };
            if let Err(e) = index.checkpoint(&tail, end, clean) {
                self.poison(&e);
                return Err(e);
            }
            io.last_checkpoint = Some(Instant::now());
        }
        Ok(())
    }

    /// Segments whose seal is now on disk are served from their files from here on: mapped
    /// read-only and indexed by the sealed index file, loaded on next use. Readers still
    /// holding the old segment (its writable map and in-memory index) keep it until done.
    pub(crate) fn reopen_sealed(&self, sealed: &[crate::segment::SegmentPaths]) {
        if sealed.is_empty() {
            return;
        }
        let mut v = self.write_view();
        for slot in v.sealed.iter_mut().filter(|s| sealed.contains(&s.paths)) {
            let reopened = SealedSegment::lazy(
                &self.dir,
                slot.first_offset,
                slot.first_index,
                slot.end_index,
                slot.end_offset,
            );
            *slot = Arc::new(reopened);
        }
    }

    /// Group commit: when the previous flush covered appends from several writers, they
    /// were released together and are appending again now. Waiting a moment for all of them
    /// lets one sync cover the whole group instead of splitting it in two (PostgreSQL's
    /// `commit_delay` with `commit_siblings`). A lone writer never waits.
    fn gather_group(&self, io: &mut FlushIo) {
        if io.last_group < 2 {
            return;
        }
        let deadline = Instant::now() + (io.last_sync / 4).min(Duration::from_micros(200));
        while self.appends.load(Ordering::Acquire) - io.appends_at_snapshot < io.last_group
            && Instant::now() < deadline
        {
            std::thread::yield_now();
        }
    }

    /// Flushes, marks the index clean, refuses further appends and releases the directory.
    pub(crate) fn close(&self) -> Result<()> {
        let mut w = self.lock_writer();
        if w.closed {
            return Ok(());
        }
        w.closed = true;
        // A failed truncation may have left no active segment to close.
        let flushed = if w.active.is_some() {
            self.flush_now(Checkpoint::Clean)
        } else {
            Ok(())
        };
        self.release();
        flushed
    }

    /// Lets go of the log as a crash would: no flush, no clean mark.
    pub(crate) fn abandon(&self) {
        self.lock_writer().closed = true;
        self.release();
    }

    /// Stops all further file I/O, fails whoever still waits, and unlocks the directory.
    fn release(&self) {
        {
            let _io = self.lock_flush_io();
            self.closed.store(true, Ordering::Release);
        }
        let waiting = std::mem::take(&mut self.lock_durable().waiters);
        self.durable_changed.notify_all();
        for (_, done) in waiting {
            done(Err(self.closed_error()));
        }
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// A background thread that flushes logs: on request (group commit under `Always`), on a
/// timer (under `Interval`), and to seal rolled segments. One flusher can serve many logs;
/// give the logs on one disk the same flusher. It stops when the last handle is dropped.
#[derive(Clone)]
pub struct Flusher {
    shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").finish_non_exhaustive()
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    requests: VecDeque<Weak<LogInner>>,
    periodic: Vec<Periodic>,
    stop: bool,
}

struct Periodic {
    log: Weak<LogInner>,
    every: Duration,
    due: Instant,
}

struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.queue.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        self.0.wake.notify_all();
    }
}

impl Flusher {
    /// Starts a flusher thread.
    pub fn new() -> Result<Flusher> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("strata-flusher".into())
            .spawn(move || run(&for_thread))
            .map_err(|e| Error::io("strata-flusher thread", e))?;
        Ok(Flusher {
            _stop: Arc::new(StopOnDrop(shared.clone())),
            shared,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.shared.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn request(&self, log: Weak<LogInner>) {
        self.lock().requests.push_back(log);
        self.shared.wake.notify_one();
    }

    pub(crate) fn flush_every(&self, log: Weak<LogInner>, every: Duration) {
        self.lock().periodic.push(Periodic {
            log,
            every,
            due: Instant::now() + every,
        });
        self.shared.wake.notify_one();
    }
}

fn run(shared: &Shared) {
    let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        let mut work: Vec<Weak<LogInner>> = queue.requests.drain(..).collect();
        queue.periodic.retain(|p| p.log.strong_count() > 0);
        let mut next_due = None::<Instant>;
        for p in &mut queue.periodic {
            if p.due <= now {
                work.push(p.log.clone());
                p.due = now + p.every;
            }
            next_due = Some(next_due.map_or(p.due, |d| d.min(p.due)));
        }
        if work.is_empty() {
            if queue.stop {
                return;
            }
            queue = match next_due {
                Some(due) => {
                    shared
                        .wake
                        .wait_timeout(queue, due.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner()),
            };
            continue;
        }
        drop(queue);
        for log in work {
            if let Some(log) = log.upgrade() {
                log.flush_requested.store(false, Ordering::Release);
                // A failure poisons the log and is reported to its appenders.
                let _ = log.flush_now(Checkpoint::IfDue);
            }
        }
        queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    }
}
