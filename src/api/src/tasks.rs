//! Long operations (import, export, clone, rollback, scrub, graceful VM stop) run as tasks: the
//! request returns a task id at once and the work continues on the runtime; clients poll
//! `GET /tasks/{id}`. Bounded: the newest `MAX_TASKS` are kept (finished ones are evicted first).
//! Persisted in `state_dir/tasks.json` (rewritten atomically when a task starts or ends), so
//! ids stay unique and results stay readable across restarts; a task that was running when the
//! node stopped is marked failed on the next start, since its work did not survive.

use crate::files::now_unix;
use control::{ControlError, Reply};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;

pub const MAX_TASKS: usize = 1000;
/// Running tasks at once; more is refused with `busy` rather than queued without bound.
pub const MAX_RUNNING: usize = 64;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Where the list is kept; None keeps it in memory only (unit tests).
    file: Option<PathBuf>,
}

impl Tasks {
    /// Load `state_dir/tasks.json`; a missing or unreadable file starts an empty list (tasks
    /// are a convenience record, never a reason to refuse to start).
    pub fn open(state_dir: &std::path::Path) -> Tasks {
        let file = state_dir.join("tasks.json");
        let mut list: VecDeque<TaskView> = crate::files::read_optional(&file)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        while list.len() > MAX_TASKS {
            list.pop_front();
        }
        for t in list.iter_mut().filter(|t| t.state == TaskState::Running) {
            t.state = TaskState::Failed;
            t.finished_unix = Some(now_unix());
            t.error = Some(ControlError::internal(
                "interrupted: the node stopped while this task ran; check the object and retry",
            ));
        }
        let next = list.iter().map(|t| t.id).max().unwrap_or(0);
        Tasks {
            inner: Mutex::new((next, list)),
            file: Some(file),
        }
    }

    fn save(&self, list: &VecDeque<TaskView>) {
        if let Some(f) = &self.file {
            let b = serde_json::to_vec(list).unwrap_or_default();
            if let Err(e) = crate::files::write_atomic(f, &b) {
                tracing::warn!("api: cannot save tasks: {e}");
            }
        }
    }

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
        self.save(&g.1);
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
            self.save(&g.1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_survive_a_restart_and_running_ones_fail() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tasks::open(dir.path());
        let a = t.start("vdisk_clone", "a -> b", "admin").unwrap();
        let b = t.start("vm_stop", "vm1", "admin").unwrap();
        t.finish(a.id, &Ok(Reply::Done));
        drop(t);
        let t = Tasks::open(dir.path());
        assert_eq!(t.get(a.id).unwrap().state, TaskState::Succeeded);
        let b2 = t.get(b.id).unwrap();
        assert_eq!(b2.state, TaskState::Failed);
        assert!(b2.error.unwrap().message.contains("interrupted"));
        let c = t.start("disk_scrub", "", "admin").unwrap();
        assert!(c.id > b.id, "ids are never reused");
        std::fs::write(dir.path().join("tasks.json"), b"not json").unwrap();
        assert!(Tasks::open(dir.path()).list(0, 10).is_empty());
    }
}
