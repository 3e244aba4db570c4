//! Budgets of open sftp handles: per session, per connection and per login user.
//!
//! Every open file or directory of the in-process sftp server holds a descriptor of the server
//! process. Without a budget one user's sessions could open handles until the process runs out
//! of descriptors, and then nobody else can log in. A session counts its own handles; what
//! it holds of its connection's and its user's budgets is given back when a handle closes or
//! the session ends, however it ends (a killed session's future is dropped, not closed).
//!
//! [`HandleBudgets`] is the server's: its limits (a reload changes them, for the next open) and
//! the count of each user with a connection that opened a session. [`ConnectionHandles`] is one
//! connection's share: its own count, and its user's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The most sftp handles (files and directories) open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleLimits {
    /// In one sftp session.
    pub per_session: usize,
    /// In all the sftp sessions of one connection.
    pub per_connection: usize,
    /// In all the sftp sessions of one login user, over all their connections.
    pub per_user: usize,
}

impl Default for HandleLimits {
    fn default() -> Self {
        Self {
            per_session: super::MAX_HANDLES,
            per_connection: 1024,
            per_user: 4096,
        }
    }
}

/// The server's handle budgets: the limits, and each user's count.
#[derive(Debug, Default)]
pub struct HandleBudgets {
    limits: Mutex<HandleLimits>,
    /// Users with a live connection share: removed with their last one.
    users: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

impl HandleBudgets {
    /// Budgets with these limits.
    pub fn new(limits: HandleLimits) -> Self {
        Self {
            limits: Mutex::new(limits),
            users: Mutex::default(),
        }
    }

    /// The limits now.
    pub fn limits(&self) -> HandleLimits {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// New limits, for every open from now on (nothing open is closed).
    pub fn set_limits(&self, limits: HandleLimits) {
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner) = limits;
    }

    /// The share of a new connection of `user`.
    pub fn connection(self: &Arc<Self>, user: &str) -> ConnectionHandles {
        let user_count = self
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(user.to_string())
            .or_default()
            .clone();
        ConnectionHandles(Arc::new(Share {
            budgets: self.clone(),
            user: user.to_string(),
            user_count,
            count: AtomicUsize::new(0),
        }))
    }

    /// How many handles `user`'s sessions hold open now.
    pub fn user_count(&self, user: &str) -> usize {
        self.users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(user)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }
}

/// One connection's share of the budgets; cheap to clone (one per session).
#[derive(Debug, Clone)]
pub struct ConnectionHandles(Arc<Share>);

#[derive(Debug)]
struct Share {
    budgets: Arc<HandleBudgets>,
    user: String,
    user_count: Arc<AtomicUsize>,
    count: AtomicUsize,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut users = self
            .budgets
            .users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Under the lock, where every other share of this user is made: the map's and ours
        // are the last two.
        if Arc::strong_count(&self.user_count) == 2 {
            users.remove(&self.user);
        }
    }
}

/// Counts one more up to `limit`; false when it is reached.
fn bump(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

impl ConnectionHandles {
    /// The limits now.
    pub fn limits(&self) -> HandleLimits {
        self.0.budgets.limits()
    }

    /// Takes one handle of the connection's and the user's budgets, or says which is spent.
    pub fn take(&self) -> Result<(), String> {
        let limits = self.limits();
        if !bump(&self.0.count, limits.per_connection) {
            return Err(format!(
                "too many open handles: max_sftp_handles_per_connection ({}) reached; close some",
                limits.per_connection
            ));
        }
        if !bump(&self.0.user_count, limits.per_user) {
            self.0.count.fetch_sub(1, Ordering::AcqRel);
            return Err(format!(
                "too many open handles: max_sftp_handles_per_user ({}) reached for {}; close some",
                limits.per_user, self.0.user
            ));
        }
        Ok(())
    }

    /// Gives `n` handles back.
    pub fn give_back(&self, n: usize) {
        if n > 0 {
            self.0.count.fetch_sub(n, Ordering::AcqRel);
            self.0.user_count.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// How many handles this connection's sessions hold open now.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }
}

/// What one session holds of its connection's share; all given back when dropped.
#[derive(Debug)]
pub(super) struct Held {
    share: Option<ConnectionHandles>,
    count: usize,
}

impl Held {
    pub(super) fn new(share: Option<ConnectionHandles>) -> Self {
        Self { share, count: 0 }
    }

    /// The most handles one session may hold now.
    pub(super) fn per_session(&self) -> usize {
        self.share
            .as_ref()
            .map_or(HandleLimits::default().per_session, |s| {
                s.limits().per_session
            })
    }

    /// Takes one handle, or says which limit is reached.
    pub(super) fn take(&mut self) -> Result<(), String> {
        let per_session = self.per_session();
        if self.count >= per_session {
            return Err(format!(
                "too many open handles: max_sftp_handles_per_session ({per_session}) reached; close some"
            ));
        }
        if let Some(share) = &self.share {
            share.take()?;
        }
        self.count += 1;
        Ok(())
    }

    /// Gives one handle back.
    pub(super) fn give_back_one(&mut self) {
        if self.count > 0 {
            self.count -= 1;
            if let Some(share) = &self.share {
                share.give_back(1);
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(share) = &self.share {
            share.give_back(self.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_refuses_by_its_name_and_everything_comes_back() {
        let budgets = Arc::new(HandleBudgets::new(HandleLimits {
            per_session: 3,
            per_connection: 4,
            per_user: 5,
        }));
        let a = budgets.connection("ann");
        let mut s1 = Held::new(Some(a.clone()));
        for _ in 0..3 {
            s1.take().unwrap();
        }
        assert!(s1
            .take()
            .unwrap_err()
            .contains("max_sftp_handles_per_session (3)"));
        let mut s2 = Held::new(Some(a.clone()));
        s2.take().unwrap();
        assert!(s2
            .take()
            .unwrap_err()
            .contains("max_sftp_handles_per_connection (4)"));
        let b = budgets.connection("ann");
        let mut s3 = Held::new(Some(b.clone()));
        s3.take().unwrap();
        let e = s3.take().unwrap_err();
        assert!(
            e.contains("max_sftp_handles_per_user (5) reached for ann"),
            "{e}"
        );
        assert_eq!(b.count(), 1, "a refused take is not counted");
        // Another user has a budget of their own.
        let mut other = Held::new(Some(budgets.connection("bob")));
        other.take().unwrap();
        s1.give_back_one();
        s3.take().unwrap();
        drop((s1, s2, s3));
        assert_eq!((a.count(), b.count(), budgets.user_count("ann")), (0, 0, 0));
        drop((a, b));
        assert_eq!(
            budgets.users.lock().unwrap().len(),
            1,
            "ann's entry is gone"
        );
        drop(other);
        assert!(budgets.users.lock().unwrap().is_empty());
    }
}
