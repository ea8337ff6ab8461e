//! Deliberate bugs in the production view evaluator, switched on per thread.
//!
//! `CompiledView::contribution()` is shared by the incremental [`ViewSet`](crate::cache::ViewSet) and
//! by [`ViewSet::recompute`](crate::cache::ViewSet::recompute), so a bug in it makes both agree on a
//! wrong answer. The self-tests switch one of these on and check that the comparison with the
//! [naive evaluator](super::naive_views) fails while the comparison with `recompute` still passes.
//! Off by default; the knob exists only with the `testing` feature.

use std::cell::Cell;

/// A bug to inject into `contribution()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewFault {
    /// Objects whose row key contains `Failed` are counted in the `Pending` row instead.
    FailedCountsAsPending,
    /// A metric's `where` clause is ignored: conditional counts count every object of the row.
    IgnoreMetricFilter,
}

thread_local! {
    static VIEW_FAULT: Cell<Option<ViewFault>> = const { Cell::new(None) };
}

/// Runs `f` with `fault` injected into the view evaluator on this thread.
pub fn with_view_fault<T>(fault: ViewFault, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<ViewFault>);
    impl Drop for Reset {
        fn drop(&mut self) {
            VIEW_FAULT.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(VIEW_FAULT.with(|c| c.replace(Some(fault))));
    f()
}

/// Switches `fault` on (or off with `None`) on this thread until changed again.
pub fn set_view_fault(fault: Option<ViewFault>) {
    VIEW_FAULT.with(|c| c.set(fault));
}

/// The fault injected on this thread, if any.
pub fn view_fault() -> Option<ViewFault> {
    VIEW_FAULT.with(Cell::get)
}

/// A bug to inject into flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowFault {
    /// Every WINDOW_UPDATE received grants twice its increment: the sender overruns the windows the
    /// receiver announced.
    DoubleCredit,
}

thread_local! {
    static FLOW_FAULT: Cell<Option<FlowFault>> = const { Cell::new(None) };
}

/// Switches a flow-control fault on (or off with `None`) on this thread until changed again.
pub fn set_flow_fault(fault: Option<FlowFault>) {
    FLOW_FAULT.with(|c| c.set(fault));
}

/// The flow-control fault injected on this thread, if any.
pub fn flow_fault() -> Option<FlowFault> {
    FLOW_FAULT.with(Cell::get)
}
