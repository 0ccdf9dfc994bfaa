//! The selective-scan `Scan` contract, stated once. The compiler emits two kinds of these nodes
//! (forward, from the re-roller; backward, from the relevance pass) and records each as a
//! [`SelectiveScan`] in the [`Graph`](super::Graph), keyed by the node's first output: no pass
//! recognises them by name.
//!
//! Forward `Scan(h0, decay, dBu, C) -> (h_last, Y[, H])` over chunks of L steps:
//! - operands: h0 `[B,D,N]` (state, not scanned); decay and dBu `[B,D,K,L,N]` scanned along
//!   [`FORWARD_INPUT_SCAN_AXES`] (axis 2); C `[B,K,L,N]` scanned along axis 1;
//! - outputs: the last state `[B,D,N]`, Y `[B,D,K,L]` and, if kept, the stored states H
//!   `[B,D,K,L,N]`, stacked along axis 2;
//! - relevance (the SSM rule) flows only through h0 and dBu ([`RELEVANCE_SLOTS`]); the decay and
//!   C are frozen.

/// Operand slot of the initial state h0.
pub const H0: usize = 0;
/// Operand slot of the decay: dA (stepwise) or log dA (chunked).
pub const DECAY: usize = 1;
/// Operand slot of the scanned input dBu.
pub const INPUT: usize = 2;
/// Operand slot of the readout C.
pub const READOUT: usize = 3;
/// Number of operands of a forward selective scan.
pub const OPERANDS: usize = 4;
/// Operand slots through which relevance flows under the SSM rule.
pub const RELEVANCE_SLOTS: [usize; 2] = [H0, INPUT];

/// Output slot of the last state.
pub const LAST_STATE: usize = 0;
/// Output slot of the stacked readouts Y.
pub const Y: usize = 1;
/// Output slot of the stored states H (present only when the states are kept).
pub const STATES: usize = 2;

/// How many of the forward operands are scanned (all but h0).
pub const FORWARD_SCAN_INPUTS: i64 = 3;
/// Scan axes of the scanned forward operands (decay, dBu, C): the chunk axis K.
pub const FORWARD_INPUT_SCAN_AXES: [i64; 3] = [2, 2, 1];
/// Scan axis of the stacked forward outputs (Y and H).
pub const FORWARD_OUTPUT_SCAN_AXIS: i64 = 2;

/// Backward `Scan(g_h_last, gY, C, decay) -> (g_h0, G_H)`, emitted by the relevance pass:
/// scanned operands gY `[B,D,K,L]` (axis 2), C (axis 1) and the decay (axis 2), all in reverse;
/// G_H, the cotangent of every state, stacked along axis 2 in reverse too.
pub const BACKWARD_SCAN_INPUTS: i64 = 3;
/// Scan axes of the scanned backward operands (gY, C, decay).
pub const BACKWARD_INPUT_SCAN_AXES: [i64; 3] = [2, 1, 2];
/// Scan axis of the stacked backward output G_H.
pub const BACKWARD_OUTPUT_SCAN_AXIS: i64 = 2;
/// ONNX Scan direction value for iterating from the last chunk to the first.
pub const REVERSE: i64 = 1;

/// Which of the compiler's selective-scan `Scan`s a node is. Both iterate over chunks of L
/// steps, reading h0 `[B,D,N]`, the decay and dBu `[B,D,K,L,N]` and C `[B,K,L,N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanKind {
    /// The rolled form: a chunk's steps run one after another; the decay input is dA.
    Stepwise,
    /// The chunked form: a chunk's steps are computed in parallel; the decay input is log dA.
    Chunked,
}

/// Whether a selective scan computes the recurrence or its reverse-time backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanDirection {
    Forward,
    Backward,
}

/// What the compiler recorded about a `Scan` node it emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectiveScan {
    pub kind: ScanKind,
    pub direction: ScanDirection,
}

impl SelectiveScan {
    pub fn forward(kind: ScanKind) -> SelectiveScan {
        SelectiveScan {
            kind,
            direction: ScanDirection::Forward,
        }
    }

    pub fn backward(kind: ScanKind) -> SelectiveScan {
        SelectiveScan {
            kind,
            direction: ScanDirection::Backward,
        }
    }
}
