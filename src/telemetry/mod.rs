//! What the agent tells the outside world: logs (and, later, metrics and health).

pub mod logs;
