//! Which target queues this gateway works, kept current. The config's
//! targets (`--target`) always run; those set through the admin API are
//! stored in the engine, read every second (and at once after a change
//! made here), checked against this gateway's destination allowlist, and
//! started, replaced or stopped. A stopped target's worker drains: calls in
//! flight may finish and be recorded (for the shutdown grace) while its
//! successor starts.
//!
//! The supervisor task owns the running workers; everyone else reads the
//! published [`Known`] map through a [`Targets`] handle.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::TargetSetting;
use super::setting::parse_admin_target;
use super::worker::{self, Gateway};
use crate::callbacks::{CallbackSettings, Refused};
use crate::domain::{QueueName, QueueTarget};
use crate::engine::Engine;

/// How often the stored targets are read (a change made on another
/// replica is picked up within this).
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// How long [`Targets::reload`] waits for the supervisor.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// A target this gateway knows of, as the admin API shows it.
#[derive(Debug, Clone)]
pub(crate) struct KnownTarget {
    /// As parsed; `None` when this gateway could not parse a stored one.
    pub(crate) setting: Option<Arc<TargetSetting>>,
    /// The stored record when set through the admin API; `None` when it
    /// is this gateway's config's.
    pub(crate) stored: Option<QueueTarget>,
    /// Why this gateway does not call it (`None`: it does).
    pub(crate) problem: Option<String>,
}

impl KnownTarget {
    /// The setting, when this gateway calls it.
    pub(crate) fn running(&self) -> Option<&Arc<TargetSetting>> {
        self.setting.as_ref().filter(|_| self.problem.is_none())
    }
}

/// Every known target by queue.
pub(crate) type Known = BTreeMap<QueueName, KnownTarget>;

/// The config's targets, as known before anything is read from the store.
fn configured_known(configured: &[TargetSetting]) -> Known {
    configured
        .iter()
        .map(|setting| {
            let known = KnownTarget {
                setting: Some(Arc::new(setting.clone())),
                stored: None,
                problem: None,
            };
            (setting.queue.clone(), known)
        })
        .collect()
}

/// A handle on the supervisor: what it publishes, and a way to make it
/// read the store now.
#[derive(Clone)]
pub(crate) struct Targets {
    known: watch::Receiver<Arc<Known>>,
    reloads: mpsc::Sender<oneshot::Sender<()>>,
}

/// The supervisor before it runs (see [`Supervisor::spawn`]).
pub(crate) struct Supervisor {
    known: watch::Sender<Arc<Known>>,
    reloads: mpsc::Receiver<oneshot::Sender<()>>,
    configured: Vec<TargetSetting>,
}

impl Targets {
    /// A handle and its supervisor for the config's targets; until the
    /// supervisor runs, those are all it knows.
    pub(crate) fn new(configured: &[TargetSetting]) -> (Self, Supervisor) {
        let (sender, receiver) = watch::channel(Arc::new(configured_known(configured)));
        let (reloads, requests) = mpsc::channel(64);
        let supervisor = Supervisor {
            known: sender,
            reloads: requests,
            configured: configured.to_vec(),
        };
        let targets = Self {
            known: receiver,
            reloads,
        };
        (targets, supervisor)
    }

    /// Every target known now.
    pub(crate) fn known(&self) -> Arc<Known> {
        self.known.borrow().clone()
    }

    /// The target this gateway calls for `queue`, if any.
    pub(crate) fn running(&self, queue: &QueueName) -> Option<Arc<TargetSetting>> {
        self.known.borrow().get(queue)?.running().cloned()
    }

    /// Whether `queue`'s target comes from this gateway's config.
    pub(crate) fn configured(&self, queue: &QueueName) -> bool {
        self.known
            .borrow()
            .get(queue)
            .is_some_and(|known| known.stored.is_none())
    }

    /// Has the supervisor read the stored targets and acted on them; waits
    /// for that (a bounded time: a slow store only delays the answer).
    pub(crate) async fn reload(&self) {
        let (done, wait) = oneshot::channel();
        if self.reloads.send(done).await.is_ok() {
            let _ = tokio::time::timeout(RELOAD_WAIT, wait).await;
        }
    }
}

/// One running target worker.
struct Running {
    setting: Arc<TargetSetting>,
    stop: CancellationToken,
}

impl Supervisor {
    /// Starts the config's targets now (a target whose client cannot be
    /// built stops the start, naming it), then keeps the stored ones
    /// current until shutdown.
    /// Workers' sessions go on `sessions` (shutdown waits for their
    /// drain), the supervisor itself on `background`.
    pub(crate) fn spawn(
        self,
        engine: Arc<dyn Engine>,
        policy: Arc<CallbackSettings>,
        gateway: Gateway,
        sessions: &TaskTracker,
        background: &TaskTracker,
    ) -> Result<(), String> {
        let mut state = State {
            engine,
            policy,
            gateway,
            sessions: sessions.clone(),
            background: background.clone(),
            running: HashMap::new(),
            failing: None,
            refused: HashMap::new(),
        };
        for setting in &self.configured {
            let setting = Arc::new(setting.clone());
            let stop = state.start(&setting, None)?;
            state
                .running
                .insert(setting.queue.clone(), Running { setting, stop });
        }
        background.spawn(self.run(state));
        Ok(())
    }

    async fn run(mut self, mut state: State) {
        let shutdown = state.gateway.shutdown.clone();
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut waiting = Vec::new();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
                Some(done) = self.reloads.recv() => waiting.push(done),
            }
            while let Ok(done) = self.reloads.try_recv() {
                waiting.push(done);
            }
            if let Some(known) = state.reconcile(&self.configured).await {
                self.known.send_replace(Arc::new(known));
            }
            for done in waiting {
                let _ = done.send(());
            }
        }
    }
}

/// What the supervisor task owns.
struct State {
    engine: Arc<dyn Engine>,
    policy: Arc<CallbackSettings>,
    gateway: Gateway,
    sessions: TaskTracker,
    background: TaskTracker,
    running: HashMap<QueueName, Running>,
    /// The store's last error, logged once per streak.
    failing: Option<String>,
    /// Why each stored target not called here is not (each logged once).
    refused: HashMap<QueueName, String>,
}

impl State {
    /// Reads the stored targets and makes the running workers match; what
    /// is known after, or `None` if the store could not be read (the
    /// running workers are then kept).
    async fn reconcile(&mut self, configured: &[TargetSetting]) -> Option<Known> {
        let stored = match self.engine.targets().await {
            Ok(stored) => {
                self.failing = None;
                stored
            }
            Err(error) => {
                let error = error.to_string();
                if self.failing.as_ref() != Some(&error) {
                    tracing::warn!(%error, "cannot read the stored queue targets; keeping the running ones");
                    self.failing = Some(error);
                }
                return None;
            }
        };
        let mut known = configured_known(configured);
        for (queue, record) in stored {
            if known.contains_key(&queue) {
                // This gateway's config says what works the queue here.
                continue;
            }
            let checked = self.check(&queue, &record.spec);
            let (setting, problem) = match checked {
                Ok(setting) => (Some(setting), None),
                Err((setting, problem)) => (setting, Some(problem)),
            };
            let before = self.refused.get(&queue);
            if problem.is_some() && problem.as_ref() != before {
                tracing::warn!(%queue, target = %record.spec, problem = problem.as_deref().unwrap_or(""), "a stored queue target is not called by this gateway");
            }
            let target = KnownTarget {
                setting,
                stored: Some(record),
                problem,
            };
            known.insert(queue, target);
        }
        self.converge(&mut known);
        self.refused = known
            .iter()
            .filter_map(|(queue, k)| Some((queue.clone(), k.problem.clone()?)))
            .collect();
        Some(known)
    }

    /// Parses a stored target and checks it against this gateway's
    /// allowlist; the setting, or why it is not called (with the setting
    /// when it parsed).
    fn check(
        &self,
        queue: &QueueName,
        spec: &str,
    ) -> Result<Arc<TargetSetting>, (Option<Arc<TargetSetting>>, String)> {
        let setting = parse_admin_target(queue, spec).map(Arc::new).map_err(|e| {
            (
                None,
                format!("this gateway cannot parse the stored target: {e}"),
            )
        })?;
        match self.policy.check_target(&setting.origin) {
            Ok(()) => Ok(setting),
            Err(Refused::Invalid(reason) | Refused::NotAllowed(reason)) => Err((
                Some(setting),
                format!("this gateway does not call it: {reason}"),
            )),
        }
    }

    /// Stops workers whose target went or changed, starts the missing ones;
    /// a target whose client cannot be built gets that as its problem.
    fn converge(&mut self, known: &mut Known) {
        self.running.retain(|queue, running| {
            let keep = known
                .get(queue)
                .and_then(KnownTarget::running)
                .is_some_and(|setting| *setting == running.setting);
            if !keep {
                tracing::info!(%queue, url = %running.setting.url(), "target stopped; its calls in flight finish");
                running.stop.cancel();
            }
            keep
        });
        for (queue, target) in known.iter_mut() {
            let Some(setting) = target.running().cloned() else {
                continue;
            };
            if self.running.contains_key(queue) {
                continue;
            }
            match self.start(&setting, Some(self.policy.clone())) {
                Ok(stop) => {
                    tracing::info!(%queue, url = %setting.url(), "target started (set through the admin API)");
                    self.running
                        .insert(queue.clone(), Running { setting, stop });
                }
                Err(error) => target.problem = Some(error),
            }
        }
    }
}

impl State {
    /// Starts one target's worker; the token that stops it. A stopped
    /// worker takes no new tickets and its calls in flight may finish for
    /// the gateway's shutdown grace; then they are dropped and their
    /// tickets go back to the queue, so a hung upstream holds nothing
    /// after its target is gone.
    fn start(
        &self,
        setting: &Arc<TargetSetting>,
        policy: Option<Arc<CallbackSettings>>,
    ) -> Result<CancellationToken, String> {
        let stop = self.gateway.shutdown.child_token();
        let hard_stop = self.gateway.hard_stop.child_token();
        let gateway = Gateway {
            shutdown: stop.clone(),
            hard_stop: hard_stop.clone(),
            ..self.gateway.clone()
        };
        worker::spawn(setting, policy, &gateway, &self.sessions)?;
        let (drain, grace) = (stop.clone(), self.gateway.grace);
        self.background.spawn(async move {
            drain.cancelled().await;
            tokio::select! {
                _ = tokio::time::sleep(grace) => hard_stop.cancel(),
                _ = hard_stop.cancelled() => {}
            }
        });
        Ok(stop)
    }
}
