// Only the supervisor orders a connection: a kill sent straight to the connection's actor
// would be in no kill group and timed by nobody. Neither the old public variants nor the
// supervisor's `Order` can be built outside the crate.
use std::time::Duration;

use sshvisor_actors::connection::{Inner, Internal, Order};
use sshvisor_actors::{ConnectionMsg, Policy, SessionId};

fn main() {
    let _ = ConnectionMsg::Internal(Internal(Inner::Order(Order::Kill {
        reason: "forged".into(),
        grace: Duration::ZERO,
        by: None,
        timed_by_sender: true,
    })));
    let _ = ConnectionMsg::Internal(Internal(Inner::Order(Order::KillSession {
        session: SessionId::new_random(),
        reason: "forged".into(),
        grace: Duration::ZERO,
    })));
    let _ = ConnectionMsg::Internal(Internal(Inner::Order(Order::SetPolicy(Policy::default()))));
    let _ = ConnectionMsg::Kill {
        reason: "forged".into(),
        grace: Duration::ZERO,
        by: None,
        timed_by_sender: true,
    };
    let _ = ConnectionMsg::KillSession {
        session: SessionId::new_random(),
        reason: "forged".into(),
        grace: Duration::ZERO,
    };
    let _ = ConnectionMsg::SetPolicy(Policy::default());
}
