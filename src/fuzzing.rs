//! **Not API.** Thin entry points for the fuzz targets under `fuzz/`, which
//! need crate-internal items (rings carved from a mapping, the pool's
//! message codecs). Hidden from the documentation; may change or vanish in
//! any release. Each function takes arbitrary bytes and panics only if it
//! finds a bug (a panic, or an invariant the function checks).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::pool::message;
use crate::ring::{self, MIN_CAPACITY};
use crate::sys::shm::{SharedMapping, RING_NAME};

/// Ring capacity the ring targets use: the smallest, so the input covers
/// the whole data area.
const CAPACITY: usize = MIN_CAPACITY;
/// Header words, as byte offsets (see the layout in `ring`).
const WORDS: [usize; 4] = [0, 128, 256, 384];
const HEADER_LEN: usize = 512;

/// A mapping holding one ring at offset 0, followed by a guard region of
/// the same size that must stay zero.
fn ring_mapping() -> Arc<SharedMapping> {
    match SharedMapping::new(RING_NAME, 2 * ring::region_size(CAPACITY)) {
        Ok(map) => Arc::new(map),
        Err(err) => panic!("fuzzing: mmap failed: {err}"),
    }
}

fn store_word(map: &SharedMapping, offset: usize, value: u64) {
    assert!(offset.is_multiple_of(8) && offset + 8 <= HEADER_LEN);
    // SAFETY: an 8-aligned word of the ring's header, inside the
    // page-aligned mapping (checked above); all access to it is atomic.
    let word = unsafe { &*map.as_ptr().add(offset).cast::<AtomicU64>() };
    word.store(value, Ordering::SeqCst);
}

fn load_word(map: &SharedMapping, offset: usize) -> u64 {
    assert!(offset.is_multiple_of(8) && offset + 8 <= HEADER_LEN);
    // SAFETY: as in store_word.
    let word = unsafe { &*map.as_ptr().add(offset).cast::<AtomicU64>() };
    word.load(Ordering::SeqCst)
}

/// Panics if anything past the ring (the guard region) was written.
fn assert_guard_untouched(map: &SharedMapping) {
    let start = ring::region_size(CAPACITY);
    // SAFETY: the guard region lies inside the mapping (see ring_mapping);
    // nothing else in this process writes it while we read.
    let guard = unsafe { std::slice::from_raw_parts(map.as_ptr().add(start), map.len() - start) };
    assert!(guard.iter().all(|&b| b == 0), "a write past the ring");
}

fn u64_from(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

/// The receiver against any shared state: the first 32 bytes become the
/// four header words, the rest the data area; then `try_recv_into` until
/// it reports an error or nothing more. Every outcome but a panic is fine.
pub fn ring_receiver(data: &[u8]) {
    let map = ring_mapping();
    let Ok((_tx, mut rx)) = ring::attach(map.clone(), 0, CAPACITY) else {
        panic!("attach to a fresh ring failed");
    };
    for (i, &offset) in WORDS.iter().enumerate() {
        store_word(&map, offset, u64_from(data.get(8 * i..).unwrap_or(&[])));
    }
    let frames = data.get(32..).unwrap_or(&[]);
    let n = frames.len().min(CAPACITY);
    // SAFETY: the data area is CAPACITY bytes at HEADER_LEN, inside the
    // mapping; `frames` is our own memory.
    unsafe { std::ptr::copy_nonoverlapping(frames.as_ptr(), map.as_ptr().add(HEADER_LEN), n) };
    let mut buf = Vec::new();
    // A ring of CAPACITY bytes holds at most CAPACITY / 8 frames.
    for _ in 0..CAPACITY / 8 + 1 {
        match rx.try_recv_into(&mut buf) {
            Ok(true) => assert!(buf.len() <= CAPACITY),
            Ok(false) | Err(_) => break,
        }
    }
    assert_guard_untouched(&map);
}

/// The sender's free-space logic against a consumer that writes anything
/// into `head`: the input is a script of 9-byte steps (an op byte, then a
/// value). Ops: send a message of `value % 3000` bytes (it may stream),
/// store `value` as head, store head = tail (a consumer that kept up), ask
/// `has_room`. The sender may report errors; it must never write outside
/// the ring or panic.
pub fn ring_sender(data: &[u8]) {
    let map = ring_mapping();
    let Ok((mut tx, _rx)) = ring::attach(map.clone(), 0, CAPACITY) else {
        panic!("attach to a fresh ring failed");
    };
    let mut msg = Vec::new();
    let mut sent = 0;
    for step in data.chunks(9) {
        let (op, value) = (step[0], u64_from(&step[1..]));
        match op % 4 {
            0 => {
                if sent == msg.len() {
                    msg = vec![op; (value % 3000) as usize];
                    sent = 0;
                }
                if tx.try_send_partial(&msg, &mut sent).is_err() {
                    sent = msg.len();
                }
            }
            1 => store_word(&map, WORDS[1], value),
            2 => store_word(&map, WORDS[1], load_word(&map, WORDS[0])),
            _ => {
                tx.has_room();
            }
        }
        assert!(sent <= msg.len());
    }
    assert_guard_untouched(&map);
}

/// The worker's task-message decoder on any bytes, twice: as they are
/// (the keyed check refuses nearly all), and sealed by this process first
/// (a batch kind byte, the input's count, the check computed), so the
/// decoder's walk over the argument lengths sees the input too. A message
/// that passes is only walked, never run (its addresses could be anything).
pub fn task_message(data: &[u8]) {
    walk_task_message(data);
    if data.len() >= message::BATCH_HEADER_LEN {
        let mut sealed = data.to_vec();
        sealed[0] = 1;
        let at = message::COUNT_AT;
        let count = u32::from_le_bytes([sealed[at], sealed[at + 1], sealed[at + 2], sealed[at + 3]]);
        message::set_batch_count(&mut sealed, count);
        walk_task_message(&sealed);
    }
}

fn walk_task_message(msg: &[u8]) {
    if let Ok(Some(batch)) = message::decode_task_message(msg) {
        for arg in batch.args() {
            assert!(arg.len() <= msg.len());
        }
        if let Some((column, arg_width, _)) = batch.column() {
            assert_eq!(column.len() % arg_width, 0);
        }
    }
}

/// The parent's result-message decoder on any bytes, with a run record's
/// values read as results of a width the input's length picks (0 to 16).
pub fn result_message(data: &[u8]) {
    let width = data.len() % 17;
    for record in message::result_records(data) {
        match record {
            Ok((tag, payload)) => {
                assert!(payload.len() <= data.len());
                if tag == message::ResultTag::OkRun as u8 {
                    if let Ok((n, values)) = message::run_values(payload, width) {
                        assert_eq!(n as usize * width, values.len());
                    }
                }
            }
            Err(_) => break,
        }
    }
}
