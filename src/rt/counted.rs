//! A value that counts its mutable borrows, so an observer (the simulation's table audits)
//! can tell an unchanged table from a changed one without walking it. Counting is one add per
//! mutable borrow; it never decides anything in the product.

use std::ops::{Deref, DerefMut};

#[derive(Debug, Default)]
pub struct Counted<T> {
    value: T,
    changes: u64,
}

impl<T> Counted<T> {
    pub fn new(value: T) -> Self {
        Counted { value, changes: 0 }
    }

    /// How many times the value was borrowed mutably: equal counts mean an unchanged value.
    pub fn changes(&self) -> u64 {
        self.changes
    }
}

impl<T> Deref for Counted<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Counted<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.changes += 1;
        &mut self.value
    }
}

#[cfg(test)]
mod tests {
    use super::Counted;

    #[test]
    fn reads_leave_the_count_and_writes_move_it() {
        let mut c = Counted::new(vec![1]);
        assert_eq!(c.len(), 1);
        assert_eq!(c.changes(), 0);
        c.push(2);
        assert_eq!(c.changes(), 1);
        let _ = c.iter().count();
        assert_eq!(c.changes(), 1);
    }
}
