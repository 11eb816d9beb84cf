//! Host bindings generated from `wit/` (the `sluice:task` package).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task",
    imports: { default: trappable },
    with: {
        "sluice:task/sql.cursor": crate::capabilities::sql_host::CursorHandle,
        "sluice:task/connections.postgres": crate::capabilities::postgres::PostgresHandle,
        "sluice:task/connections.bucket": crate::capabilities::bucket::BucketHandle,
    },
});
