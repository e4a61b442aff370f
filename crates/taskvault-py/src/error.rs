//! Engine errors as Python exceptions, mapped here and nowhere else. I/O kinds become the
//! built-in exceptions Python users expect (`FileNotFoundError`, `PermissionError`); the rest
//! are `TaskVaultError` or one of its subclasses.

use pyo3::exceptions::{
    PyException, PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError,
};
use pyo3::{PyErr, create_exception};

create_exception!(_native, TaskVaultError, PyException, "An error from the TaskVault engine.");
create_exception!(
    _native,
    NotFoundError,
    TaskVaultError,
    "No entry matches the hash given (also a `KeyError` in spirit: check `taskvault log`)."
);
create_exception!(
    _native,
    AmbiguousError,
    NotFoundError,
    "A hash prefix names more than one run: give more of it."
);
create_exception!(_native, ConfigError, TaskVaultError, "The configuration file is not valid.");
create_exception!(
    _native,
    TooLargeError,
    TaskVaultError,
    "A result is larger than its policy's max_size_bytes; nothing was stored."
);

/// Converts an engine error (or a front-end `anyhow` error) for Python.
pub fn to_py(e: taskvault::Error) -> PyErr {
    use taskvault::Error as E;
    let message = e.to_string();
    match e {
        E::Io(io) | E::IoAt { source: io, .. } => io_error(&io, message),
        E::NotFound(_) => NotFoundError::new_err(message),
        E::Ambiguous { .. } => AmbiguousError::new_err(message),
        E::Config { .. } => ConfigError::new_err(message),
        E::TooLarge { .. } => TooLargeError::new_err(message),
        E::BadInput { .. } | E::BadDestination { .. } | E::BadDigest(_) => {
            PyValueError::new_err(message)
        }
        _ => TaskVaultError::new_err(message),
    }
}

fn io_error(io: &std::io::Error, message: String) -> PyErr {
    match io.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
        _ => PyOSError::new_err(message),
    }
}

/// Settings resolution reports through `anyhow`; its root cause decides the class.
pub fn from_anyhow(e: anyhow::Error) -> PyErr {
    match e.downcast::<taskvault::Error>() {
        Ok(engine) => to_py(engine),
        Err(other) => ConfigError::new_err(format!("{other:#}")),
    }
}
