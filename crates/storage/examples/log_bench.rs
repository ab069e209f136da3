//! Micro-benchmark of the Raft log's durable append: `blocking_append` of 1, 10 and 100 entries
//! of about 150 bytes each, waiting for durability after every batch, as openraft 0.9 does.
//!
//! Run: `cargo run --release -p ravel-storage --example log_bench -- [variant]`; it prints the
//! mean and p99 latency per append and the process CPU time (getrusage, all threads) per append.
//! This is a measuring tool, not a test.

use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use ravel_core::command::Command;
use ravel_storage::{Storage, StorageOptions, TypeConfig, WalOptions, WalSync};
use std::time::{Duration, Instant};

/// Payload bytes per entry's value (the whole encoded entry is about 150 bytes).
const VALUE_BYTES: usize = 120;

fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

fn entry(index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Command::Put {
            partition: (index % 64) as u32,
            key: format!("key-{index:08}").into_bytes(),
            value: vec![b'x'; VALUE_BYTES],
            cas: None,
        }),
    }
}

async fn run(storage: &Storage, batch: u64, appends: u64, next: &mut u64) {
    let mut log = storage.log_store();
    let mut latencies = Vec::with_capacity(appends as usize);
    let cpu_before = cpu_time();
    let started = Instant::now();
    for _ in 0..appends {
        let entries: Vec<_> = (*next..*next + batch).map(entry).collect();
        *next += batch;
        let t = Instant::now();
        log.blocking_append(entries).await.expect("append");
        latencies.push(t.elapsed());
    }
    let wall = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    println!(
        "batch {batch:>3}: {appends:>5} appends, mean {:>7.1} us, p50 {:>7.1} us, p99 {:>7.1} us, cpu {:>6.1} us/append",
        wall.as_secs_f64() * 1e6 / appends as f64,
        latencies[latencies.len() / 2].as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        cpu.as_secs_f64() * 1e6 / appends as f64,
    );
}

fn main() {
    let variant = std::env::args().nth(1).unwrap_or_else(|| "default".into());
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let storage = open(&variant, dir.path());
        println!("variant {variant}");
        let mut next = 1;
        for (batch, appends) in [(1, 2000), (10, 1000), (100, 300)] {
            run(&storage, batch, appends, &mut next).await;
        }
        let (entries, cached_bytes) = storage.log_store().memory_use();
        println!("log holds {entries} entries, {cached_bytes} record bytes cached in memory");
    });
}

/// `wal[-prealloc]-{data,all}`: the WAL with or without preallocated segments, synced with
/// `fdatasync` or `fsync`. (The sled log store this replaced was measured with the same
/// program before the change.)
fn open(variant: &str, dir: &std::path::Path) -> Storage {
    let wal = WalOptions {
        preallocate: variant.contains("prealloc"),
        sync: if variant.ends_with("-all") {
            WalSync::All
        } else {
            WalSync::Data
        },
        ..WalOptions::default()
    };
    Storage::open_with(dir, StorageOptions { wal }).expect("open")
}
