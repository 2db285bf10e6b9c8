//! A monotonic clock in seconds that works natively and in the browser, where
//! `std::time::Instant` panics (wasm32-unknown-unknown has no clock):
//! there it is `performance.now()` of the page or worker.

/// Seconds since an arbitrary start, monotonic.
#[cfg(not(target_arch = "wasm32"))]
pub fn seconds() -> f64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Seconds since an arbitrary start, monotonic.
#[cfg(target_arch = "wasm32")]
pub fn seconds() -> f64 {
    use wasm_bindgen::JsCast;
    let global = js_sys::global();
    let now = js_sys::Reflect::get(&global, &"performance".into())
        .ok()
        .and_then(|perf| {
            let now = js_sys::Reflect::get(&perf, &"now".into()).ok()?;
            now.dyn_into::<js_sys::Function>().ok()?.call0(&perf).ok()?.as_f64()
        })
        .unwrap_or_else(js_sys::Date::now);
    now / 1e3
}
