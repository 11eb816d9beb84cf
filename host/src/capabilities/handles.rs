//! Guest handles of the WIT resources a capability implements. The bindings
//! name each resource with an opaque type (`sql::Cursor`, `connections::Postgres`);
//! the entry behind a handle is the owning capability's own type, stored in the
//! try's resource table. A handle whose entry is of another type is refused by
//! the table (`WrongType`), so one capability cannot reach another's entries.

use wasmtime::component::{Resource, ResourceTable, ResourceTableError};

/// Stores `entry` and returns the guest's handle to it, as WIT resource `R`.
pub fn push<T: Send + 'static, R: 'static>(
    table: &mut ResourceTable,
    entry: T,
) -> Result<Resource<R>, ResourceTableError> {
    Ok(Resource::new_own(table.push(entry)?.rep()))
}

/// The entry of type `T` behind the guest's `handle`.
pub fn get<'t, T: 'static, R: 'static>(
    table: &'t ResourceTable,
    handle: &Resource<R>,
) -> Result<&'t T, ResourceTableError> {
    table.get(&Resource::<T>::new_borrow(handle.rep()))
}

/// The entry of type `T` behind the guest's `handle`, mutably.
pub fn get_mut<'t, T: 'static, R: 'static>(
    table: &'t mut ResourceTable,
    handle: &Resource<R>,
) -> Result<&'t mut T, ResourceTableError> {
    table.get_mut(&Resource::<T>::new_borrow(handle.rep()))
}

/// Removes the entry of type `T` behind the guest's owned `handle` (its drop).
pub fn delete<T: 'static, R: 'static>(
    table: &mut ResourceTable,
    handle: Resource<R>,
) -> Result<T, ResourceTableError> {
    table.delete(Resource::<T>::new_own(handle.rep()))
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Guest {}

    #[test]
    fn a_handle_reaches_only_an_entry_of_its_own_type() {
        let mut table = ResourceTable::new();
        let handle: Resource<Guest> = push(&mut table, 7u32).expect("push");
        assert_eq!(get::<u32, _>(&table, &handle).ok(), Some(&7));
        *get_mut::<u32, _>(&mut table, &handle).expect("entry") = 8;
        assert!(matches!(
            get::<String, _>(&table, &handle),
            Err(ResourceTableError::WrongType)
        ));
        assert_eq!(delete::<u32, _>(&mut table, handle).ok(), Some(8));
    }
}
