//! One reconcile for every lifecycle (docs/design.md §11.2): observe once, decide (pure) at most
//! one step and the status that describes it, act, then write the status — or, when anything
//! failed, a status that says so. A kind's managed and observe-only lifecycles differ only in
//! what they observe, decide and do.

use std::{future::Future, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{Resource, ResourceExt, runtime::controller::Action};
use serde::de::DeserializeOwned;

use crate::{
    controller::{
        context::Context,
        error::{Error, Op},
        status::{self, HasConditions},
    },
    ens::Credentials,
};

/// A decision: at most one step, the status to show, and when to look again.
#[derive(Clone, Debug)]
pub struct Plan<Step, Status> {
    /// The step to take, if any.
    pub step: Option<Step>,
    /// The status describing the object after this decision.
    pub status: Status,
    /// When to reconcile again if nothing else triggers it.
    pub requeue: Duration,
}

/// How soon to look again after a mutating step (its own watch event usually comes first).
pub const AFTER_STEP: Duration = Duration::from_millis(200);

/// What one kind's lifecycle observes, decides and does.
pub(crate) trait Lifecycle {
    /// The custom resource.
    type Object: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Sync;
    /// Its status.
    type Status: HasConditions + Default + Send;
    /// Everything a decision looks at.
    type Seen: Send + Sync;
    /// One mutating step.
    type Step: Send;

    /// The status as last written.
    fn current(obj: &Self::Object) -> Option<&Self::Status>;

    /// Whether the cache has not caught up with an id this process just recorded (the watch
    /// event of that write wakes the next reconcile).
    fn awaits_record(_obj: &Self::Object, _ctx: &Context) -> bool {
        false
    }

    /// Reads everything once; the credentials when they are usable.
    fn observe(
        obj: &Self::Object,
        ctx: &Context,
    ) -> impl Future<Output = Result<(Self::Seen, Option<Credentials>), Error>> + Send;

    /// Chooses the next step. Pure.
    fn decide(seen: &Self::Seen, ctx: &Context, now: Timestamp) -> Plan<Self::Step, Self::Status>;

    /// The step's name, for the log.
    fn step_name(step: &Self::Step) -> &'static str;

    /// Takes the step.
    fn act(
        obj: &Self::Object,
        ctx: &Context,
        seen: &Self::Seen,
        creds: Option<&Credentials>,
        step: Self::Step,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// An observe-only lifecycle: it looks and reports, and never takes a step.
pub(crate) trait Report {
    /// The custom resource.
    type Object: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Sync;
    /// Its status.
    type Status: HasConditions + Default + Send;
    /// Everything the report looks at.
    type Seen: Send + Sync;

    /// The status as last written.
    fn current(obj: &Self::Object) -> Option<&Self::Status>;

    /// Reads everything once.
    fn look(
        obj: &Self::Object,
        ctx: &Context,
    ) -> impl Future<Output = Result<Self::Seen, Error>> + Send;

    /// The status to show and when to look again. Pure.
    fn report(seen: &Self::Seen, ctx: &Context, now: Timestamp) -> (Self::Status, Duration);
}

impl<R: Report> Lifecycle for R {
    type Object = R::Object;
    type Status = R::Status;
    type Seen = R::Seen;
    type Step = std::convert::Infallible;

    fn current(obj: &R::Object) -> Option<&R::Status> {
        R::current(obj)
    }

    async fn observe(
        obj: &R::Object,
        ctx: &Context,
    ) -> Result<(R::Seen, Option<Credentials>), Error> {
        Ok((R::look(obj, ctx).await?, None))
    }

    fn decide(seen: &R::Seen, ctx: &Context, now: Timestamp) -> Plan<Self::Step, R::Status> {
        let (status, requeue) = R::report(seen, ctx, now);
        Plan {
            step: None,
            status,
            requeue,
        }
    }

    fn step_name(step: &Self::Step) -> &'static str {
        match *step {}
    }

    async fn act(
        _: &R::Object,
        _: &Context,
        _: &R::Seen,
        _: Option<&Credentials>,
        step: Self::Step,
    ) -> Result<(), Error> {
        match step {}
    }
}

/// Reconciles `obj` once through lifecycle `L`.
pub(crate) async fn run<L: Lifecycle>(obj: &L::Object, ctx: &Context) -> Result<Action, Error> {
    if L::awaits_record(obj, ctx) {
        return Ok(Action::requeue(AFTER_STEP));
    }
    let now = Timestamp::now();
    let outcome = async {
        let (seen, creds) = L::observe(obj, ctx).await?;
        let mut plan = L::decide(&seen, ctx, now);
        if let Some(step) = plan.step.take() {
            tracing::info!(
                kind = %<L::Object as Resource>::kind(&()),
                name = %obj.name_any(),
                namespace = ?obj.namespace(),
                step = L::step_name(&step),
                "acting"
            );
            L::act(obj, ctx, &seen, creds.as_ref(), step).await?;
        }
        status::apply(obj, L::current(obj), &plan.status, &ctx.client)
            .await
            .map_err(Error::kube(Op::WritingStatus))?;
        Ok::<_, Error>(Action::requeue(plan.requeue))
    }
    .await;
    if let Err(e) = &outcome {
        status::show_error(obj, L::current(obj), e, &Time(now), &ctx.client).await;
    }
    outcome
}

/// Shows in status that reconciliation of `obj` is paused (see [`status::paused`]).
pub(crate) async fn pause<L: Lifecycle>(obj: &L::Object, ctx: &Context) -> Result<(), Error> {
    let current = L::current(obj).cloned().unwrap_or_default();
    let s = status::paused(current, obj.meta().generation, &Time(Timestamp::now()));
    status::apply(obj, L::current(obj), &s, &ctx.client)
        .await
        .map_err(Error::kube(Op::WritingStatus))?;
    Ok(())
}
