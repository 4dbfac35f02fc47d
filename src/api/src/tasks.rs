//! Long operations (import, export, clone, rollback, scrub) run as tasks: the request returns a
//! task id at once and the work continues on the runtime; clients poll `GET /tasks/{id}`.
//! In memory, bounded: the newest `MAX_TASKS` are kept (finished ones are evicted first).

use crate::files::now_unix;
use control::{ControlError, Reply};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::VecDeque;

pub const MAX_TASKS: usize = 1000;
/// Running tasks at once; more is refused with `busy` rather than queued without bound.
pub const MAX_RUNNING: usize = 64;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub id: u64,
    pub action: String,
    pub target: String,
    pub user: String,
    pub state: TaskState,
    pub started_unix: u64,
    pub finished_unix: Option<u64>,
    /// 0..=1 when the work reports it; null when unknown (the UI shows elapsed time).
    pub progress: Option<f64>,
    pub result: Option<serde_json::Value>,
    pub error: Option<ControlError>,
}

#[derive(Debug, Default)]
pub struct Tasks {
    inner: Mutex<(u64, VecDeque<TaskView>)>,
}

impl Tasks {
    pub fn start(&self, action: &str, target: &str, user: &str) -> Result<TaskView, ControlError> {
        let mut g = self.inner.lock();
        let running = g.1.iter().filter(|t| t.state == TaskState::Running).count();
        if running >= MAX_RUNNING {
            return Err(ControlError::new(
                control::ErrorCode::Busy,
                format!("{running} tasks are running; wait for some to finish"),
            ));
        }
        g.0 += 1;
        let t = TaskView {
            id: g.0,
            action: action.into(),
            target: target.into(),
            user: user.into(),
            state: TaskState::Running,
            started_unix: now_unix(),
            finished_unix: None,
            progress: Some(0.0),
            result: None,
            error: None,
        };
        while g.1.len() >= MAX_TASKS {
            match g.1.iter().position(|t| t.state != TaskState::Running) {
                Some(i) => {
                    g.1.remove(i);
                }
                None => break,
            }
        }
        g.1.push_back(t.clone());
        Ok(t)
    }

    pub fn finish(&self, id: u64, res: &Result<Reply, ControlError>) {
        let mut g = self.inner.lock();
        if let Some(t) = g.1.iter_mut().find(|t| t.id == id) {
            t.finished_unix = Some(now_unix());
            match res {
                Ok(r) => {
                    t.state = TaskState::Succeeded;
                    t.progress = Some(1.0);
                    t.result = crate::render::reply_value(r).ok();
                }
                Err(e) => {
                    t.state = TaskState::Failed;
                    t.error = Some(e.clone());
                }
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<TaskView> {
        self.inner.lock().1.iter().find(|t| t.id == id).cloned()
    }

    /// Newest first, ids below `before` (0: from the newest).
    pub fn list(&self, before: u64, limit: usize) -> Vec<TaskView> {
        self.inner
            .lock()
            .1
            .iter()
            .rev()
            .filter(|t| before == 0 || t.id < before)
            .take(limit)
            .cloned()
            .collect()
    }
}
