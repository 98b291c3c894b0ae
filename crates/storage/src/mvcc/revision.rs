//! A revision names one change in the store: `main` is the store-wide revision of the transaction
//! that made it, `sub` orders the changes inside that transaction.

/// One change's position in history. Ordered by `main`, then `sub`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

impl Revision {
    pub const fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }
}
