//! Keeps one task per rule running, and applies new rules without losing memory: an unchanged
//! rule keeps running untouched; a changed rule restarts with its memory (when its target is
//! the same); a removed rule stops and is forgotten.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::heap;
use super::rule_task::{label, RuleTask, Shared};
use super::shutdown::Shutdown;
use crate::config::{Rule, RulesFile};
use crate::policy::Memory;
use crate::triggers::PollerFactory;

struct Running {
    rule: Arc<Rule>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<Memory>,
}

pub struct Supervisor {
    shared: Arc<Shared>,
    factory: PollerFactory,
    running: HashMap<String, Running>,
    /// Memories read from the state ConfigMap, used when a rule starts.
    stored: HashMap<String, Memory>,
}

impl Supervisor {
    pub fn new(shared: Arc<Shared>, factory: PollerFactory) -> Self {
        Supervisor {
            shared,
            factory,
            running: HashMap::new(),
            stored: HashMap::new(),
        }
    }

    pub fn set_stored(&mut self, stored: HashMap<String, Memory>) {
        self.stored = stored;
    }

    pub fn is_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// Brings the running tasks in line with `rules`.
    pub async fn apply(&mut self, rules: &RulesFile) {
        let wanted: HashMap<&str, &Arc<Rule>> =
            rules.rules.iter().map(|r| (r.name.as_str(), r)).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(running) = self.running.remove(&name) {
                let triggers: Vec<String> = (0..running.rule.triggers.len())
                    .map(|i| label(&running.rule, i))
                    .collect();
                stop(running).await;
                self.shared.metrics.forget_rule(&name, &triggers);
                if let Some(state) = &self.shared.state {
                    state.forget(&name);
                }
                tracing::info!(rule = %name, "rule removed");
            }
        }
        for rule in &rules.rules {
            let memory = match self.running.get(&rule.name) {
                Some(running) if running.rule == *rule => continue,
                Some(_) => {
                    let Some(running) = self.running.remove(&rule.name) else {
                        continue;
                    };
                    let same_target = running.rule.target == rule.target;
                    let memory = stop(running).await;
                    tracing::info!(rule = %rule.name, "rule changed; restarting it");
                    if same_target {
                        memory
                    } else {
                        Memory::default()
                    }
                }
                None => self.stored.remove(&rule.name).unwrap_or_default(),
            };
            self.start(rule.clone(), memory).await;
        }
        self.shared.metrics.tasks.set(self.running.len() as i64);
        // Starting rules leaves the heap full of freed temporaries; see `heap`.
        heap::release_after(heap::SETTLE);
    }

    async fn start(&mut self, rule: Arc<Rule>, memory: Memory) {
        let mut pollers = Vec::with_capacity(rule.triggers.len());
        for trigger in &rule.triggers {
            pollers.push(self.factory.build(trigger, rule.poll_interval.get()).await);
        }
        let (stop, shutdown) = Shutdown::new();
        let task = RuleTask::new(rule.clone(), pollers, memory);
        let handle = tokio::spawn(task.run(self.shared.clone(), shutdown));
        self.running
            .insert(rule.name.clone(), Running { rule, stop, handle });
    }

    /// Stops every task, waiting up to `grace` for running ticks; returns their memories.
    pub async fn stop_all(&mut self, grace: Duration) -> HashMap<String, Memory> {
        let mut memories = HashMap::new();
        let running: Vec<(String, Running)> = self.running.drain().collect();
        for (_, task) in &running {
            let _ = task.stop.send(true);
        }
        for (name, mut task) in running {
            match tokio::time::timeout(grace, &mut task.handle).await {
                Ok(Ok(memory)) => {
                    memories.insert(name, memory);
                }
                _ => task.handle.abort(),
            }
        }
        self.shared.metrics.tasks.set(0);
        heap::release_after(Duration::ZERO);
        memories
    }
}

async fn stop(running: Running) -> Memory {
    let _ = running.stop.send(true);
    running.handle.await.unwrap_or_default()
}
