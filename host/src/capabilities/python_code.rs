//! The `python-code` capability (`wit/python.wit`): hands a Python task's
//! module name and sources to the runtime component that runs it. Its state
//! is the task's [`PythonCode`], empty for a component that is a task itself.

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::python::sluice::task::python_code::{self, Host, SourceFile, TaskCode};
use crate::python_package::PythonPackage;

/// The code of the Python task an instance runs, if it runs one.
#[derive(Debug, Clone, Default)]
pub struct PythonCode(pub Option<Arc<PythonPackage>>);

/// Registers the `python-code` interface, served from the [`PythonCode`] `get` returns.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut PythonCode,
) -> wasmtime::Result<()> {
    python_code::add_to_linker::<T, HasSelf<PythonCode>>(linker, get)
}

impl Host for PythonCode {
    fn code(&mut self) -> wasmtime::Result<TaskCode> {
        // Only a runtime component imports this; one deployed as a task of
        // its own has no code to run.
        let package = self.0.as_ref().ok_or_else(|| {
            wasmtime::Error::msg(
                "this component is the Python runtime, not a task: deploy a Python task (plugins/dist/<name>.pytask) instead",
            )
        })?;
        Ok(TaskCode {
            module: package.module.clone(),
            sources: package
                .sources
                .iter()
                .map(|s| SourceFile {
                    path: s.path.clone(),
                    text: s.text.clone(),
                })
                .collect(),
        })
    }
}
