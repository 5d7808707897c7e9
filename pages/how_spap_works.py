"""How SPAP works: the penalty path on a toy layer of 8 channels, small enough that the exact
optimum can be found by trying every mask, so SPAP's answer can be checked against it."""

import pandas as pd
import plotly.express as px
import streamlit as st

from pages._experiments import toy_demo
from pages._routing import ensure_routed
from spap_core.errors import SpapInputError
from spap_core.methods.spap import SCHEDULES, PenaltySettings

ensure_routed()

TOY_WIDTH = 8
CORRELATED_RANK = 2  # shared latent factors behind the channels when "correlated" is ticked
RHO0_CHOICES = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0]

st.title("How SPAP works")
problem_column, penalty_column = st.columns(2, gap="large")
problem_column.markdown(
    r"""
Pruning channel $i$ of a GLU MLP removes row $i$ of gate/up and column $i$ of $W_{\text{down}}$. Per layer,
with activations $Z$ and dense output $Y$, SPAP solves

$$\min_{W,s}\ \tfrac12\lVert WZ-Y\rVert_F^2\quad\text{s.t.}\quad W\,\mathrm{diag}(s)=0,\ \ \mathbf 1^\top s=\lambda,\ \ s\in\{0,1\}^n$$

where $s_i = 1$ means "pruned". **Relaxation theorem:** allowing $s\in[0,1]^n$ loses nothing. A feasible
relaxed $s$ has at least $\lambda$ non-zero entries and each forces a zero column of $W$, so a binary mask with
the same objective can be read off any relaxed optimum.
"""
)
penalty_column.markdown(
    r"""
**Penalty idea:** instead of the hard constraint $W\,\mathrm{diag}(s)=0$, add
$\tfrac{\rho}{2}\sum_i s_i\lVert W_{:,i}\rVert^2$ to the objective and grow $\rho\leftarrow\tau\rho$ every
iteration. Each iteration moves $s$ a step $\alpha$ towards the $\lambda$ channels with the lowest score
$\lVert W_{:,i}\rVert\cdot\lVert Z_i\rVert^t$, then re-solves $W$ in closed form with the penalty. As $\rho$
grows, columns with large $s_i$ are driven to zero and $s$ becomes binary; the kept columns are finally refitted
by least squares. Below, a random layer of 8 channels is small enough to try every mask, so SPAP's answer can be
checked against the exact optimum.
"""
)

controls_column, mask_column, result_column = st.columns([1, 2.2, 1.5], gap="medium")
with controls_column:
    defaults = PenaltySettings()
    rho0 = st.select_slider("ρ⁽⁰⁾: initial penalty", RHO0_CHOICES, value=defaults.rho0, key="toy_rho0")
    tau = st.slider("τ: penalty growth", 1.05, 8.0, defaults.tau, 0.05, key="toy_tau")
    balance = st.slider("t: score balance", 0.0, 3.0, defaults.balance, 0.1, key="toy_t")
    momentum = st.slider("α: mask momentum", 0.05, 1.0, defaults.momentum, 0.05, key="toy_alpha")
    iterations = st.slider("K: ρ iterations", 1, 60, defaults.iterations, key="toy_K")
    n_prune = st.slider("λ: channels to prune", 1, TOY_WIDTH - 1, 3, key="toy_lambda")
    score = st.radio("Activation magnitude in the score", ["marginal", "partial"], horizontal=True, key="toy_score",
                     help="marginal = ‖Zᵢ‖; partial = what channel i adds beyond the others.")
    schedule = st.radio("Marking schedule", SCHEDULES, index=SCHEDULES.index(defaults.schedule), horizontal=True,
                        key="toy_schedule",
                        help="fixed = λ channels marked every step; ramp = ⌈λk/K⌉ at step k.")
    correlated = st.checkbox("Correlated channels", key="toy_correlated",
                             help="Channels share a few latent factors, as in real MLPs; then a channel's own "
                                  "magnitude says little about what the others cannot replace.")
    seed = st.number_input("Seed of the random layer", 0, 10_000, 0, key="toy_seed")

try:
    penalty = PenaltySettings(iterations=int(iterations), rho0=float(rho0), tau=float(tau), balance=float(balance),
                              momentum=float(momentum), score=score, schedule=schedule)
except SpapInputError as exc:
    st.error(str(exc))
    st.stop()
demo = toy_demo(penalty, n_prune=int(n_prune), seed=int(seed), width=TOY_WIDTH,
                latent_rank=CORRELATED_RANK if correlated else 0)
spap_pruned, exact_pruned = demo.pruned(demo.spap), demo.pruned(demo.exact)

path = pd.DataFrame([
    {"iteration": step.iteration, "channel": str(channel), "s": float(step.soft_mask[channel]),
     "ρ": step.rho, "objective": step.objective, "violation": step.violation}
    for step in demo.steps for channel in range(TOY_WIDTH)
])
path["pruned by"] = path["channel"].map(lambda c: " & ".join(
    name for name, chosen in (("SPAP", spap_pruned), ("exact", exact_pruned)) if int(c) in chosen) or "neither")

with mask_column:
    figure = px.line(path, x="iteration", y="s", color="channel", line_dash="pruned by", markers=True,
                     range_y=[-0.03, 1.03], title="Relaxed mask s per channel as ρ grows (1 = pruned)",
                     labels={"iteration": "ρ iteration"})
    figure.update_layout(height=520, margin=dict(t=50, b=10, l=10, r=10))
    st.plotly_chart(figure, width="stretch")
with result_column:
    gap = demo.spap.objective - demo.exact.objective
    st.markdown("**SPAP vs the exact optimum**")
    st.table(pd.DataFrame({
        "pruned": [str(spap_pruned), str(exact_pruned)],
        "objective": [f"{demo.spap.objective:.4g}", f"{demo.exact.objective:.4g}"],
    }, index=["SPAP", "exact (every mask)"]))
    if spap_pruned == exact_pruned:
        st.success("SPAP found the optimal mask.", icon=":material/check_circle:")
    else:
        st.warning(f"SPAP's mask is not optimal here: its objective is {gap:.4g} higher "
                   f"({gap / max(demo.exact.objective, 1e-12):.1%}). Try the partial score with the ramp, "
                   "or other ρ⁽⁰⁾, τ, t or α.")
    per_step = path.drop_duplicates("iteration")
    figure = px.line(per_step, x="iteration", y=["objective", "violation"], log_y=True, markers=True,
                     title="Objective and violation",
                     labels={"value": "", "iteration": "ρ iteration", "variable": ""})
    figure.update_layout(height=280, margin=dict(t=50, b=10, l=10, r=10), legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(figure, width="stretch")
    st.caption("Objective: ½‖WZ−Y‖² of the penalised solution. Violation: Σ sᵢ‖W[:,i]‖², which the growing ρ "
               "drives to zero.")
