//! Host bindings generated from `wit/` (the `sluice:task` package): a leaf
//! that the capabilities implement. Resources are the generated opaque types
//! (`sql::Cursor`, `connections::Postgres`, `connections::Bucket`); the entry
//! behind a handle belongs to its capability (see `capabilities::handles`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task",
    imports: { default: trappable },
});

/// The host's side of the Python runtime's own import (`wit/python.wit`):
/// `python-code`, which hands a Python task's sources to the runtime.
pub mod python {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "python-host",
        imports: { default: trappable },
    });
}

/// The version of the `sluice:task` package (`wit/task.wit`) this host implements.
pub const CONTRACT_VERSION: &str = "0.2.1";

/// The other `sluice:task` version `component` imports, if it was built
/// against one: what makes a component of an earlier contract fail to link.
pub fn foreign_contract(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
) -> Option<String> {
    component
        .component_type()
        .imports(engine)
        .find_map(|(name, _)| {
            let version = name.strip_prefix("sluice:task/")?.split_once('@')?.1;
            (version != CONTRACT_VERSION).then(|| version.to_owned())
        })
}

/// Whether `component` imports the `sql` interface (of any `sluice:task`
/// version): a task that can ask for a DuckDB session. Components import
/// only the interfaces they use.
pub fn imports_sql(component: &wasmtime::component::Component, engine: &wasmtime::Engine) -> bool {
    component
        .component_type()
        .imports(engine)
        .any(|(name, _)| name.starts_with("sluice:task/sql@"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_contract_version_is_the_wit_package_version() {
        let wit = include_str!("../../wit/task.wit");
        let package = format!("\npackage sluice:task@{};\n", super::CONTRACT_VERSION);
        assert!(
            wit.contains(&package),
            "wit/task.wit does not declare {package}"
        );
    }
}
