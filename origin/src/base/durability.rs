//! Durability levels: what must hold before a write is acknowledged.

/// What must hold before a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// In memory (and queued for the log and the store): the pure design, where the store is a backup.
    Memory,
    /// In the local write-ahead log, fsynced: survives a killed process.
    Log,
    /// In the object store.
    Store,
    /// Derived objects: in memory and the write-behind, never in the log,
    /// because the view engine rebuilds them from the (logged) entities at
    /// start. Not a client's choice.
    #[value(skip)]
    Derived,
}

impl Durability {
    /// The name used in headers and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::Log => "log",
            Durability::Store => "store",
            Durability::Derived => "derived",
        }
    }

    /// Parses a header value (a client may ask for the first three only).
    pub fn parse(s: &str) -> Option<Durability> {
        match s.trim() {
            "memory" => Some(Durability::Memory),
            "log" => Some(Durability::Log),
            "store" => Some(Durability::Store),
            _ => None,
        }
    }
}
