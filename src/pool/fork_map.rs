//! `fork_map`: workers forked at the call, so closures and inputs never
//! cross a wire.
//!
//! The workers inherit the closure (with its captures) and the whole input
//! slice by copy-on-write; they claim items with one atomic counter in
//! shared memory (uneven work balances itself), and only results come back,
//! through one result ring per worker.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;

use super::message::ResultTag;
use super::shared::{self, Bell, Layout, Woke};
use crate::error::{Error, Result};
use crate::sys::{self, Forked};
use crate::wire::Wire;

const RING_CAPACITY: usize = 64 * 1024;

struct Child {
    pid: i32,
    /// Read end of a pipe only the child holds open: EOF = it died.
    sentinel: OwnedFd,
    reaped: bool,
}

/// Applies `f` to every item on `processes` workers forked now, and returns
/// the results in input order, with the same error rules as
/// [`Pool::map`](crate::Pool::map): the first error in input order, after
/// every item has ended.
///
/// Nothing is serialized on the way in: `f` may capture anything, and
/// `items` may be large; the children see both through copy-on-write.
/// Forking happens on the calling thread (see the fork rules in
/// [`crate::process`]).
///
/// ```
/// let words = vec!["fork".to_string(), "waitpid".into(), "pipe".into()];
/// let suffix = "(2)"; // a capture: fine here, impossible with Pool::map
/// let lens = mproc::fork_map(2, &words, |w| format!("{w}{suffix}"))?;
/// assert_eq!(lens, vec!["fork(2)", "waitpid(2)", "pipe(2)"]);
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn fork_map<T, R, F>(processes: usize, items: &[T], f: F) -> Result<Vec<R>>
where
    R: Wire,
    F: Fn(&T) -> R,
{
    if processes == 0 {
        return Err(Error::InvalidArgument("fork_map needs at least 1 process".into()));
    }
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let n = processes.min(items.len());
    let layout = Layout::new(n, RING_CAPACITY)?;
    let bell = Bell::new()?;
    let mut children: Vec<Child> = Vec::with_capacity(n);
    let mut outcome = start_workers(&layout, &bell, n, items, &f, &mut children)
        .and_then(|()| collect::<R>(&layout, &bell, items.len(), &mut children));
    // Whatever happened, no child outlives the call.
    for c in children.iter_mut().filter(|c| !c.reaped) {
        if outcome.is_err() {
            let _ = sys::kill(c.pid, libc::SIGKILL);
        }
        if let Err(e) = sys::waitpid(c.pid, false) {
            outcome = outcome.and(Err(e));
        }
    }
    outcome
}

fn start_workers<T, R: Wire, F: Fn(&T) -> R>(
    layout: &Layout,
    bell: &Bell,
    n: usize,
    items: &[T],
    f: &F,
    children: &mut Vec<Child>,
) -> Result<()> {
    for slot in 0..n {
        let (sentinel, sentinel_w) = sys::pipe()?;
        // SAFETY: the child runs only `work` and `_exit`s.
        match unsafe { sys::fork() }? {
            Forked::Child => {
                // Child: keep the sentinel's write end until death; the
                // parent's ends (and earlier siblings' sentinels) are not ours.
                sys::close_inherited(sentinel.as_raw_fd());
                sys::close_inherited(bell.read.as_raw_fd());
                for c in children.iter() {
                    sys::close_inherited(c.sentinel.as_raw_fd());
                }
                std::mem::forget(sentinel_w);
                panic::set_hook(Box::new(|_| {}));
                let code = if work(layout, bell.write.as_fd(), slot, items, f).is_ok() { 0 } else { 1 };
                sys::flush_stdio();
                sys::exit_now(code)
            }
            Forked::Parent(pid) => {
                drop(sentinel_w);
                children.push(Child { pid, sentinel, reaped: false });
            }
        }
    }
    Ok(())
}

/// A worker: claim, run, send, until the items run out.
fn work<T, R: Wire, F: Fn(&T) -> R>(
    layout: &Layout,
    parent_bell: std::os::fd::BorrowedFd<'_>,
    slot: usize,
    items: &[T],
    f: &F,
) -> Result<()> {
    let (mut ring, _) = layout.result_channel(slot)?;
    let mut out = Vec::new();
    loop {
        // Relaxed: the counter only hands out distinct numbers; the items
        // themselves were copied at fork and never change.
        let i = layout.claim_counter().fetch_add(1, Ordering::Relaxed) as usize;
        if i >= items.len() {
            return Ok(());
        }
        layout.running_item(slot).store(i as u64 + 1, Ordering::Relaxed);
        out.clear();
        out.extend_from_slice(&(i as u64).to_le_bytes());
        let tag = match panic::catch_unwind(AssertUnwindSafe(|| f(&items[i]))) {
            Ok(value) => {
                out.push(ResultTag::Ok as u8);
                value.encode(&mut out);
                ResultTag::Ok
            }
            Err(payload) => {
                out.push(ResultTag::Panicked as u8);
                out.extend_from_slice(crate::process::panic_message(payload.as_ref()).as_bytes());
                ResultTag::Panicked
            }
        };
        let _ = tag;
        let mut sent = 0;
        while !ring.try_send_partial(&out, &mut sent)? {
            shared::wake(layout.parent_sleeping(), parent_bell);
            // Nobody rings our bell: poll briefly for space instead.
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        shared::wake(layout.parent_sleeping(), parent_bell);
    }
}

fn collect<R: Wire>(layout: &Layout, bell: &Bell, len: usize, children: &mut [Child]) -> Result<Vec<R>> {
    let mut results: Vec<Option<Result<R>>> = (0..len).map(|_| None).collect();
    let mut filled = 0;
    let mut buf = Vec::new();
    let mut last_death: Option<Error> = None;
    let mut rings = (0..children.len()).map(|k| Ok(layout.result_channel(k)?.1)).collect::<Result<Vec<_>>>()?;
    while filled < len {
        // Results first: a dead worker's last results are still good.
        for ring in rings.iter_mut() {
            while ring.try_recv_into(&mut buf)? {
                filled += file(&mut results, &buf);
            }
        }
        for (slot, c) in children.iter_mut().enumerate() {
            if c.reaped {
                continue;
            }
            let ready = sys::poll(&[(c.sentinel.as_fd(), true, false)], Some(std::time::Duration::ZERO))?;
            if !(ready[0].hangup || ready[0].readable) {
                continue;
            }
            while rings[slot].try_recv_into(&mut buf)? {
                filled += file(&mut results, &buf);
            }
            let status = sys::waitpid(c.pid, false)?.ok_or(Error::InvalidState("no status"))?;
            c.reaped = true;
            let running = layout.running_item(slot).load(Ordering::Relaxed);
            if running > 0 && results[running as usize - 1].is_none() {
                let i = running as usize - 1;
                results[i] = Some(Err(Error::died(c.pid, status, Some(i as u64))));
                filled += 1;
            }
            if !status.success() {
                last_death = Some(Error::died(c.pid, status, None));
            }
        }
        if filled >= len {
            break;
        }
        if children.iter().all(|c| c.reaped) {
            // Every worker is gone and items are left: they cannot run.
            let err = last_death.clone().unwrap_or(Error::Closed);
            for r in results.iter_mut().filter(|r| r.is_none()) {
                *r = Some(Err(err.clone()));
            }
            break;
        }
        let sentinels: Vec<_> = children.iter().filter(|c| !c.reaped).map(|c| c.sentinel.as_fd()).collect();
        let rings_ready = || rings.iter().any(|r| r.has_data());
        if shared::sleep(layout.parent_sleeping(), bell.read.as_fd(), &sentinels, None, rings_ready)?
            == Woke::BellClosed
        {
            continue;
        }
    }
    results.into_iter().map(|r| r.unwrap_or(Err(Error::Closed))).collect()
}

/// Files one result message (`index u64 | tag | payload`); returns 1 if it
/// filled a new slot.
fn file<R: Wire>(results: &mut [Option<Result<R>>], msg: &[u8]) -> usize {
    if msg.len() < 9 {
        return 0;
    }
    let i = u64::from_le_bytes(msg[..8].try_into().unwrap_or([0xff; 8])) as usize;
    let Some(slot) = results.get_mut(i) else { return 0 };
    if slot.is_some() {
        return 0;
    }
    let payload = &msg[9..];
    *slot = Some(match ResultTag::from_byte(msg[8]) {
        Some(ResultTag::Ok) => R::from_bytes(payload).map_err(Error::Decode),
        Some(ResultTag::Panicked) => Err(Error::Panicked { message: String::from_utf8_lossy(payload).into_owned() }),
        _ => Err(Error::Decode(crate::wire::DecodeError::new("corrupt result frame"))),
    });
    1
}
