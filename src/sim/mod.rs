//! `qscale simulate`: replay a load trace through a rule, offline, beside a model of KEDA + HPA.
//!
//! The simulator drives the very `policy::decide` the agent runs ([`driver::policy_tick`]), so
//! what it shows is what the agent would do, given the queue and worker model in [`queue`].
//! Everything but [`cli`] (and its [`args`]) is pure: the same trace and settings give the same numbers.
//!
//! * [`trace`]: the CSV formats and per-step load;
//! * [`queue`]: visible and in-flight messages, replicas starting and stopping, message ages;
//! * [`driver`]: the step loop and qscale's tick;
//! * [`reference`]: KEDA's activation and the HPA's algorithm, from their documentation;
//! * [`compare`]: one trace through both; [`sweep`]: the same for several values of a setting;
//! * [`report`], [`svg`]: the summary table, the CSV and the chart;
//! * [`generate`]: the synthetic traces in `config/traces/`.

pub mod args;
pub mod cli;
pub mod compare;
pub mod driver;
pub mod generate;
pub mod queue;
pub mod reference;
pub mod report;
pub mod svg;
pub mod sweep;
pub mod trace;

pub use args::{OutputArgs, ReferenceArgs, SimulateArgs, WorkerArgs};
pub use cli::run_cli;
