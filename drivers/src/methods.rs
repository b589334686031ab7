//! [`MethodTable`]: a driver's closed set of methods, named once.
//!
//! A driver lists its methods as an enum; `describe()` iterates
//! [`MethodTable::ALL`] and `call()` parses the name with
//! [`MethodTable::from_name`] and matches the enum, so a method's name is
//! written in one place and `describe()` cannot drift from what `call()`
//! serves.

/// A closed set of RPC methods.
pub trait MethodTable: Copy + Sized + 'static {
    /// Every method, in `describe()` order.
    const ALL: &'static [Self];

    /// The method's RPC name.
    fn name(self) -> &'static str;

    /// The method called `name`, if there is one.
    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| m.name() == name)
    }
}
