//! Quota reservations of this process: what requests still starting something (a lab's VMs,
//! a function's clones, a checkpoint's or capture's disk) hold of their owner's quota until
//! what they start is counted by its stored state.

/// Resources counted against a user's quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub vms: i64,
    pub memory_mib: i64,
    pub disk_mib: i64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.vms += o.vms;
        self.memory_mib += o.memory_mib;
        self.disk_mib += o.disk_mib;
    }
}

/// What a reservation is for. While one is held, it stands for the thing it names (a lab's
/// VMs, a function's clones): the stored state of that thing is not counted beside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Claim {
    /// The VMs of a lab being brought up, restarted or restored.
    Lab(String),
    /// The clones of a function being deployed.
    Function(String),
    /// Disk a checkpoint or capture being written may take (named for messages).
    Disk(String),
}

struct Reserved {
    owner: String,
    claim: Claim,
    usage: Usage,
}

#[derive(Default)]
struct Table {
    next: u64,
    held: std::collections::HashMap<u64, Reserved>,
}

/// Quota held back by requests between their check and the moment what they start is counted
/// from the store (the end of their operation). Checking and reserving happen under one lock
/// ([`reservations`]), so two requests never both take the last of a quota.
fn table() -> &'static std::sync::Mutex<Table> {
    static T: std::sync::OnceLock<std::sync::Mutex<Table>> = std::sync::OnceLock::new();
    T.get_or_init(Default::default)
}

/// The reservation table, locked: read what is held, then [`Reservations::reserve`] before
/// letting go, so the check and the reservation are one step.
pub struct Reservations(std::sync::MutexGuard<'static, Table>);

/// Locks the reservation table (short: callers read the store and decide while holding it).
pub fn reservations() -> Reservations {
    Reservations(table().lock().unwrap_or_else(|e| e.into_inner()))
}

impl Reservations {
    /// `owner`'s reservations: what each is for and holds.
    pub fn of(&self, owner: &str) -> Vec<(Claim, Usage)> {
        self.0
            .held
            .values()
            .filter(|r| r.owner == owner)
            .map(|r| (r.claim.clone(), r.usage))
            .collect()
    }

    /// Holds `usage` of `owner`'s quota for `claim` until the returned value is dropped.
    pub fn reserve(&mut self, owner: &str, claim: Claim, usage: Usage) -> Reservation {
        self.0.next += 1;
        let id = self.0.next;
        self.0.held.insert(
            id,
            Reserved {
                owner: owner.to_string(),
                claim,
                usage,
            },
        );
        Reservation { id }
    }
}

/// Quota held for a request until dropped (move it into the operation's task).
#[derive(Debug)]
pub struct Reservation {
    id: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        table()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .remove(&self.id);
    }
}
