//! Embedded ClickHouse through chDB's C API (`libchdb.so`, loaded at run time from the path
//! `infra/chdb/setup.sh` prints). This module is the only unsafe code in agentnet: the FFI
//! calls, each with the invariant it relies on written beside it.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::Mutex;

use libloading::Library;
use thiserror::Error;

/// Why a chDB call failed.
#[derive(Debug, Error)]
pub enum ChdbError {
    /// The library could not be loaded or lacks a symbol.
    #[error("loading libchdb ({0}): set AGENTNET_CHDB_LIB, e.g. $(infra/chdb/setup.sh)")]
    Load(String),
    /// The engine refused to start.
    #[error("chDB could not open {0}")]
    Connect(String),
    /// A query failed.
    #[error("chDB query failed: {0}")]
    Query(String),
}

type Connect = unsafe extern "C" fn(c_int, *mut *mut c_char) -> *mut *mut c_void;
type Close = unsafe extern "C" fn(*mut *mut c_void);
type QueryN =
    unsafe extern "C" fn(*mut c_void, *const c_char, usize, *const c_char, usize) -> *mut c_void;
type ResultPtr = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type ResultLen = unsafe extern "C" fn(*mut c_void) -> usize;
type Destroy = unsafe extern "C" fn(*mut c_void);

struct Api {
    connect: Connect,
    close: Close,
    query_n: QueryN,
    buffer: ResultPtr,
    length: ResultLen,
    error: ResultPtr,
    destroy: Destroy,
    /// Never unloaded: libchdb registers thread-local destructors that run at thread exit,
    /// after any handle of ours is gone, so its code must stay mapped for the process.
    _lib: std::mem::ManuallyDrop<Library>,
}

/// One chDB engine for the process, its queries serialised.
pub struct Chdb {
    api: Api,
    /// `chdb_connection *` as returned by `chdb_connect`; non-null while `self` lives.
    conn: Mutex<*mut *mut c_void>,
}

// SAFETY: the connection pointer is only used under the mutex, and chDB's API is documented
// thread-safe for queries on a connection; the library handle is immutable.
unsafe impl Send for Chdb {}
// SAFETY: as above: every use of `conn` takes the mutex.
unsafe impl Sync for Chdb {}

impl Chdb {
    /// Loads `lib` and opens (or creates) the database in `dir`. chDB allows one engine
    /// path per process.
    pub fn open(lib: &Path, dir: &Path) -> Result<Chdb, ChdbError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ChdbError::Connect(format!("{}: {e}", dir.display())))?;
        // SAFETY: loading libchdb runs its static initialisers, which have no preconditions.
        let library = unsafe { Library::new(lib) }
            .map_err(|e| ChdbError::Load(format!("{}: {e}", lib.display())))?;
        // SAFETY: the symbol types match chdb.h's declarations of the stable 2.x API.
        let api = unsafe {
            let sym = |name: &[u8]| -> Result<*const (), ChdbError> {
                library
                    .get::<*const ()>(name)
                    .map(|s| *s)
                    .map_err(|e| ChdbError::Load(format!("{}: {e}", String::from_utf8_lossy(name))))
            };
            Api {
                connect: std::mem::transmute::<*const (), Connect>(sym(b"chdb_connect\0")?),
                close: std::mem::transmute::<*const (), Close>(sym(b"chdb_close_conn\0")?),
                query_n: std::mem::transmute::<*const (), QueryN>(sym(b"chdb_query_n\0")?),
                buffer: std::mem::transmute::<*const (), ResultPtr>(sym(b"chdb_result_buffer\0")?),
                length: std::mem::transmute::<*const (), ResultLen>(sym(b"chdb_result_length\0")?),
                error: std::mem::transmute::<*const (), ResultPtr>(sym(b"chdb_result_error\0")?),
                destroy: std::mem::transmute::<*const (), Destroy>(sym(
                    b"chdb_destroy_query_result\0",
                )?),
                _lib: std::mem::ManuallyDrop::new(library),
            }
        };
        let args = [
            CString::new("chdb").unwrap_or_default(),
            CString::new(format!("--path={}", dir.display()))
                .map_err(|e| ChdbError::Connect(e.to_string()))?,
        ];
        let mut argv: Vec<*mut c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
        // SAFETY: argv holds two valid NUL-terminated strings that outlive the call; chDB does
        // not keep them.
        let conn = unsafe { (api.connect)(argv.len() as c_int, argv.as_mut_ptr()) };
        // SAFETY: a non-null result points at the connection handle.
        if conn.is_null() || unsafe { (*conn).is_null() } {
            return Err(ChdbError::Connect(dir.display().to_string()));
        }
        Ok(Chdb {
            api,
            conn: Mutex::new(conn),
        })
    }

    /// Runs one statement; returns its output in `format` (e.g. `JSONEachRow`).
    pub fn query(&self, sql: &str, format: &str) -> Result<Vec<u8>, ChdbError> {
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `*guard` is the live connection handle (non-null, checked at open); the
        // query and format buffers are valid for their lengths during the call.
        let result = unsafe {
            (self.api.query_n)(
                **guard,
                sql.as_ptr().cast(),
                sql.len(),
                format.as_ptr().cast(),
                format.len(),
            )
        };
        if result.is_null() {
            return Err(ChdbError::Query("no result".into()));
        }
        // SAFETY: `result` is a live result until destroyed below; the error string and the
        // buffer it owns are copied out before that.
        let outcome = unsafe {
            let err = (self.api.error)(result);
            if !err.is_null() {
                Err(ChdbError::Query(
                    CStr::from_ptr(err).to_string_lossy().into_owned(),
                ))
            } else {
                let ptr = (self.api.buffer)(result);
                let len = (self.api.length)(result);
                Ok(if ptr.is_null() || len == 0 {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(ptr.cast::<u8>(), len).to_vec()
                })
            }
        };
        // SAFETY: destroyed once, after its contents were copied.
        unsafe { (self.api.destroy)(result) };
        outcome
    }
}

impl Drop for Chdb {
    fn drop(&mut self) {
        let conn = *self.conn.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the handle is live and closed exactly once; no query can run concurrently
        // because `drop` has exclusive access.
        unsafe { (self.api.close)(conn) };
    }
}
