"""The ECG design note's "green" hybrid: a binarised spiking pyramid and a learned-entanglement circuit, gated.

``GreenNet`` for a (channels, T) window:

    r     = pyramid(x)                                  firing rates (B, C_3) of three one-bit spiking stages
                                                        (``common.spiking``: stage1 .. stage3)
    A     = classical_fc(r)                             path A, classical: one logit per class
    B     = fc(quantum(proj(r)))                        path B: ``proj`` maps r to one feature per qubit, the
                                                        ``LearnedEntanglementHead`` (8 qubits, 3 layers by
                                                        default) reads <Z_i>, ``fc`` maps them to the classes
    out   = (1 - alpha) A + alpha B,  alpha = sigmoid(gate), gate starting at 0

The note leaves open what path B reads; here it reads path A's rates, so the qubits carry learned summaries
of the ECG (one per wire) and the circuit's pair strengths say which of them it couples. Ablations:
``spiking=False`` (ReLU stages, one step), ``binary=False`` (real weights), ``entanglement="fixed"`` (every pair at
half strength, no attention), ``paths="classical"`` or ``"quantum"`` (one path alone, no gate).

Layers (the strategies' unit): ``stage1`` .. ``stage3``, ``classical_fc``, ``proj``, ``quantum``, ``fc``, ``gate``
(those the paths keep). The strategies average the stages' latent real weights; a deployment stores their signs.
"""

from __future__ import annotations

import torch
from torch import nn

from common.learned_entanglement import LearnedEntanglementHead
from common.model import FusionGate, LayeredModel, in_float32
from common.spiking import pyramid_forward, pyramid_stages

PATHS = ("both", "classical", "quantum")
ENTANGLEMENT = ("learned", "fixed")


class GreenNet(LayeredModel):
    """Spiking one-bit pyramid + learned-entanglement circuit, fused by a learned gate (module docstring)."""

    BLOCKS = ("stage1", "stage2", "stage3")

    def __init__(self, in_channels: int, num_classes: int, n_qubits: int = 8, n_layers: int = 3, *,
                 spiking: bool = True, binary: bool = True, entanglement: str = "learned", paths: str = "both",
                 num_steps: int = 4, channels: tuple[int, int, int] = (16, 32, 32),
                 quantum_backend: str = "torch") -> None:
        super().__init__()
        if paths not in PATHS:
            raise ValueError(f"paths must be one of {PATHS}, got {paths!r}")
        if entanglement not in ENTANGLEMENT:
            raise ValueError(f"entanglement must be one of {ENTANGLEMENT}, got {entanglement!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
        self.num_classes, self.n_qubits, self.paths = num_classes, n_qubits, paths
        self.num_steps = num_steps
        self.stage1, self.stage2, self.stage3 = pyramid_stages(in_channels, channels, spiking=spiking, binary=binary)
        width = channels[-1]
        if paths != "quantum":
            self.classical_fc = nn.Linear(width, num_classes)
        if paths != "classical":
            self.proj = nn.Linear(width, n_qubits)
            self.quantum = LearnedEntanglementHead(n_qubits, n_layers, backend=quantum_backend,
                                                   learned=entanglement == "learned")
            self.fc = nn.Linear(n_qubits, num_classes)
        if paths == "both":
            self.gate = FusionGate()
        self.head_layers = tuple(n for n in ("classical_fc", "proj", "quantum", "fc", "gate") if hasattr(self, n))
        self.spikes_per_sample: float = 0.0

    @property
    def stages(self) -> list[nn.Module]:
        return [self.stage1, self.stage2, self.stage3]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Path A's firing rates (B, C_3); the spikes of this pass are counted in ``spikes_per_sample``."""
        rates, self.spikes_per_sample = pyramid_forward(self.stages, x, self.num_steps)
        return rates

    @staticmethod
    def head_forward(owner: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Logits from the rates through ``owner``'s head layers (a GreenNet, or a split head holding them)."""
        if owner.paths == "classical":
            return owner.classical_fc(h)
        quantum = owner.fc(in_float32(owner.quantum, owner.proj(h)))
        return quantum if owner.paths == "quantum" else owner.gate(owner.classical_fc(h), quantum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_forward(self, self.pooled(x))

    @property
    def fusion_alpha(self) -> float | None:
        return self.gate.alpha if self.paths == "both" else None

    def deployed_bits(self) -> int:
        """Bits a deployment stores: one per one-bit convolution weight (plus channel scales), 32 per other value."""
        stages = sum(stage.deployed_bits() for stage in self.stages)
        stage_params = sum(p.numel() for stage in self.stages for p in stage.parameters())
        return stages + 32 * (sum(p.numel() for p in self.parameters()) - stage_params)
