//! Starting the ranks: one thread per local device, each registered with burn-collective, each
//! running [`crate::trainer::train_rank`] on its own model replica.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use burn_collective::PeerId;
use qtune_data::Example;

use super::{collective_config, GradSync};
use crate::config::RunConfig;
use crate::model::{TrainBackend, TrainLm};
use crate::replica::compute_lock;
use crate::trainer::{device_inner, train_rank, RunInputs, TrainOptions, TrainSummary};
use crate::TrainError;

/// burn-collective keeps one local server per backend type per process: one data-parallel run
/// at a time in a process.
static SESSION: Mutex<()> = Mutex::new(());

/// Trains on every device of `devices` (this host's; several hosts: `cfg.distributed`) as one
/// data-parallel run. `build` makes a rank's model replica on its device; every replica must be
/// identical (same config and seeds; replicas are built one after another because random
/// initialisation seeds the backend's process-global RNG).
///
/// One device and one host is exactly [`crate::trainer::train`]. Returns this host's first
/// rank's model and summary (rank 0's on host 0: the adapter, metrics and checkpoints are its).
pub fn train_parallel<B, M, F>(
    cfg: &RunConfig,
    devices: &[B::Device],
    build: F,
    train_set: &[Example],
    val_set: &[Example],
    pad_id: u32,
    opts: &TrainOptions,
) -> Result<(M, TrainSummary), TrainError>
where
    B: TrainBackend,
    M: TrainLm<B> + Send,
    F: Fn(&B::Device) -> Result<M, TrainError> + Sync,
{
    let local = devices.len();
    if local == 0 {
        return Err(TrainError::Devices {
            msg: "no device given".into(),
        });
    }
    let dist = cfg.distributed.as_ref();
    let (nodes, node_rank) = dist.map_or((1, 0), |d| (d.num_nodes as usize, d.node_rank as usize));
    let world = local * nodes;
    if world == 1 {
        let model = {
            let _compute = compute_lock();
            build(&devices[0])?
        };
        return crate::trainer::train(cfg, model, train_set, val_set, pad_id, &devices[0], opts);
    }
    // Rank 0's host writes the run folder: lock it for the whole run.
    let _lock = if node_rank == 0 {
        Some(crate::lock::RunLock::acquire(&cfg.output_dir())?)
    } else {
        None
    };
    let collective = collective_config(local, dist)?;
    let _session = SESSION.lock().unwrap_or_else(|e| e.into_inner());
    tracing::info!(world, local, nodes, node_rank, "data-parallel run");
    let build = &build;
    let run = &RunInputs::new(cfg, train_set, val_set, pad_id, opts);
    let results: Vec<Result<(M, TrainSummary), TrainError>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, device)| {
                let rank = node_rank * local + i;
                let collective = collective.clone();
                std::thread::Builder::new()
                    .name(format!("rank-{rank}"))
                    .spawn_scoped(s, move || {
                        run_rank::<B, M, F>(run, rank, world, device, collective, build)
                    })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                let rank = node_rank * local + i;
                match h {
                    Err(e) => Err(TrainError::RankPanicked {
                        rank,
                        msg: format!("thread not started: {e}"),
                    }),
                    Ok(h) => h.join().unwrap_or_else(|p| {
                        Err(TrainError::RankPanicked {
                            rank,
                            msg: panic_message(p.as_ref()),
                        })
                    }),
                }
            })
            .collect()
    });
    pick(results)
}

/// Rank 0's result when every rank succeeded; else the first error that is not merely "a peer
/// failed" (the cause), else the first error.
fn pick<T>(results: Vec<Result<T, TrainError>>) -> Result<T, TrainError> {
    if results.iter().all(Result::is_ok) {
        return results
            .into_iter()
            .next()
            .unwrap_or(Err(TrainError::Devices {
                msg: "no device given".into(),
            }));
    }
    let mut errors: Vec<TrainError> = results.into_iter().filter_map(Result::err).collect();
    let cause = errors
        .iter()
        .position(|e| !matches!(e, TrainError::PeerFailed { .. }))
        .unwrap_or(0);
    Err(errors.swap_remove(cause))
}

fn run_rank<B, M, F>(
    run: &RunInputs<'_>,
    rank: usize,
    world: usize,
    device: &B::Device,
    collective: burn_collective::CollectiveConfig,
    build: &F,
) -> Result<(M, TrainSummary), TrainError>
where
    B: TrainBackend,
    M: TrainLm<B>,
    F: Fn(&B::Device) -> Result<M, TrainError>,
{
    let inner = device_inner::<B>(device);
    let peer = PeerId::from(rank);
    // Blocks until every rank (of every host) has registered.
    burn_collective::register::<B::InnerBackend>(peer, inner.clone(), collective).map_err(|e| {
        TrainError::Collective {
            what: "register",
            msg: format!("{e:?}"),
        }
    })?;
    let mut sync = GradSync::collective(rank, world);
    let result = catch_unwind(AssertUnwindSafe(|| {
        let built = {
            let _compute = compute_lock();
            build(device)
        };
        match built {
            Ok(model) => train_rank(run, model, device, &mut sync),
            // The peers wait in the set-up barrier: `on_error` below tells them.
            Err(e) => Err(e),
        }
    }))
    .unwrap_or_else(|p| {
        Err(TrainError::RankPanicked {
            rank,
            msg: panic_message(p.as_ref()),
        })
    });
    if let Err(e) = &result {
        tracing::error!(rank, "rank stopped: {e}");
        sync.on_error::<B::InnerBackend>(&inner);
    }
    if let Err(e) = burn_collective::finish_collective::<B::InnerBackend>(peer) {
        tracing::warn!(rank, "burn-collective finish: {e:?}");
    }
    result
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}
