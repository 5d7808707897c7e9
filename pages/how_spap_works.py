"""How SPAP works: the penalty path on a toy layer of 8 channels, small enough that the exact
optimum can be found by trying every mask, so SPAP's answer can be checked against it.

A lesson for a projector: the path chart and one plain sentence first (s against ρ next to what ρ does
to W), the notation in "The maths" below it, then the settings, the binary read-out as a panel of
its own, one-click scenarios. The run comes from spap_core.methods.toy and every sentence about it from
spap_service.lesson, computed from the run it describes; this file is layout only."""

import math

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from plotly.subplots import make_subplots

from pages._charts import show_chart
from pages._routing import ensure_routed
from pages._text import plain
from spap_core.errors import SpapInputError
from spap_core.methods.spap import SCHEDULES
from spap_core.methods.toy import (
    BALANCE_RANGE,
    ITERATIONS_RANGE,
    MOMENTUM_RANGE,
    N_PRUNE_RANGE,
    RHO0_CHOICES,
    SEED_RANGE,
    SPAP_DECLARED,
    TAU_RANGE,
    TOY_SCORES,
    ToyOutcome,
    ToySettings,
    run_toy,
)
from spap_service.lesson import (
    SCENARIOS,
    advice,
    algorithm_text,
    mask_caption,
    norm_caption,
    objective_caption,
    path_picture,
    readout_caption,
    verdict,
)

ensure_routed()

# ToySettings field → widget key (the keys are the page's interface: the scenarios and the tests set them)
WIDGET_KEYS = {"rho0": "toy_rho0", "tau": "toy_tau", "balance": "toy_t", "momentum": "toy_alpha",
               "iterations": "toy_K", "n_prune": "toy_lambda", "score": "toy_score", "schedule": "toy_schedule",
               "correlated": "toy_correlated", "seed": "toy_seed"}
POWER_TICKS = dict(exponentformat="power", showexponent="all")  # 10⁻², not "10m"
MAX_RHO_TICKS = 8
RHO_AXIS = "ρ (× mean diag H), log scale"
CHANNEL_COLORS = px.colors.qualitative.Plotly  # one colour per channel
DASHES = {"SPAP & exact": "solid", "SPAP": "dash", "exact": "dot", "neither": "solid"}
NORM_BARS = (("dense W₀", "#9ecae1"), ("end of the path", "#4292c6"), ("after the refit", "#08306b"))
LAYOUT = dict(margin=dict(t=70, b=10, l=10, r=10), font=dict(size=14))  # readable on a projector
PROBLEM_TEXT = ("Pruning channel $i$ of an MLP removes row $i$ of its input projections (gate and up of a GLU, fc1 "
                "of a plain MLP) and column $i$ of its output projection $W$ (down_proj, fc2). Per layer, with "
                "activations $Z$ and dense output $Y$, SPAP solves")
# one st.latex block: a formula never breaks across lines, however narrow the screen
PROBLEM_FORMULA = (r"\min_{W,s}\ \tfrac12\lVert WZ-Y\rVert_F^2\quad\text{s.t.}\quad W\,\mathrm{diag}(s)=0,\ \ "
                   r"\mathbf 1^\top s=\lambda,\ \ s\in\{0,1\}^n")
RELAXATION_TEXT = (
    r'where $s_i = 1$ means "pruned". **Relaxation theorem:** allowing $s\in[0,1]^n$ loses nothing: a feasible '
    r"relaxed $s$ has at least $\lambda$ non-zero entries and each forces a zero column of $W$, so a binary mask with "
    r"the same objective can be read off any relaxed optimum. **Penalty idea:** replace $W\,\mathrm{diag}(s)=0$ by "
    r"the penalty $\tfrac{\rho}{2}\sum_i s_i\lVert W_{:,i}\rVert^2$ and grow $\rho$. Here a random layer of 8 "
    "channels is small enough to try every mask, so SPAP's answer is checked against the exact optimum.")


def apply_scenario(settings: ToySettings) -> None:
    """A scenario button's callback: it runs before the rerun draws the widgets, so they show the
    scenario's values (a widget's state cannot be set once it is drawn)."""
    for name, key in WIDGET_KEYS.items():
        st.session_state[key] = getattr(settings, name)


def rho_axes(figure, rhos: np.ndarray) -> None:
    """Log axes that show the value of ρ as powers of ten: one label per decade (fewer when the
    path spans dozens), and plotly's own ticks when it spans less than a decade and a half."""
    decades = float(np.log10(rhos.max() / rhos.min()))
    spacing = dict(dtick=max(1, math.ceil(decades / MAX_RHO_TICKS))) if decades >= 1.5 else {}
    figure.update_xaxes(type="log", **POWER_TICKS, **spacing)


def path_figure(outcome: ToyOutcome):
    """s against ρ next to ‖W[:,i]‖ ÷ ‖W₀[:,i]‖ against ρ, one legend group per channel (same colour
    in both panels; thick = pruned by someone, dashed = SPAP only, dotted = the exact optimum only)."""
    spap, exact = set(outcome.spap_pruned), set(outcome.exact_pruned)
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                           subplot_titles=("s (1 = pruned)", "‖W[:,i]‖ ÷ ‖W₀[:,i]‖ (1 = dense)"))
    iterations = np.arange(1, len(outcome.steps) + 1)
    for channel in range(outcome.width):
        who = " & ".join(name for name, chosen in (("SPAP", spap), ("exact", exact)) if channel in chosen) or "neither"
        name = f"{channel}: kept" if who == "neither" else f"{channel}: pruned by {who}"
        line = dict(color=CHANNEL_COLORS[channel % len(CHANNEL_COLORS)], dash=DASHES[who],
                    width=1.5 if who == "neither" else 3)
        for column, values in ((1, outcome.soft_masks[:, channel]), (2, outcome.relative_norms[:, channel])):
            figure.add_scatter(x=outcome.rhos, y=values, customdata=iterations, mode="lines+markers", name=name,
                               legendgroup=str(channel), showlegend=column == 1, line=line, row=1, col=column,
                               hovertemplate=f"channel {channel}<br>iteration %{{customdata}}, ρ = %{{x:.3g}}"
                                             "<br>%{y:.3g}<extra></extra>")
    figure.add_hline(y=1, line_dash="dot", line_color="gray", row=1, col=2)
    rho_axes(figure, outcome.rhos)
    figure.update_xaxes(title_text=RHO_AXIS)
    figure.update_yaxes(range=[-0.03, 1.03], row=1, col=1)
    figure.update_yaxes(rangemode="tozero", row=1, col=2)
    figure.update_layout(title="Relaxed mask s per channel (left) and what ρ does to W (right), as ρ grows",
                         height=520, legend=dict(title="channel"), **LAYOUT)
    return figure


def readout_figure(outcome: ToyOutcome):
    """The binary read-out as its own panel: the last s per channel with the λ largest marked,
    then the column norms dense → end of the path → after the refit (pruned = 0)."""
    channels = [str(c) for c in range(outcome.width)]
    pruned = set(outcome.spap_pruned)
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.16,
                           subplot_titles=("last s", "‖W[:,i]‖"))
    figure.add_bar(x=channels, y=outcome.soft_masks[-1], row=1, col=1, showlegend=False,
                   marker_color=["#d62728" if c in pruned else "#7f7f7f" for c in range(outcome.width)],
                   text=["pruned" if c in pruned else "kept" for c in range(outcome.width)], textposition="outside",
                   hovertemplate="channel %{x}: s = %{y:.4g}<extra></extra>")
    for (name, color), norms in zip(NORM_BARS, (outcome.dense_column_norms, outcome.column_norms[-1],
                                                outcome.refit_column_norms(outcome.spap))):
        figure.add_bar(x=channels, y=norms, name=name, marker_color=color, row=2, col=1)
    figure.update_yaxes(range=[0, 1.3], row=1, col=1)
    figure.update_xaxes(title_text="channel", row=2, col=1)
    figure.update_layout(title=f"Binary read-out: the λ = {outcome.n_prune} largest s are pruned", height=480,
                         barmode="group", legend=dict(orientation="h", y=-0.22), **LAYOUT)
    return figure


def objective_figure(outcome: ToyOutcome):
    """Objective and violation against ρ on linear axes (a log axis drops a line that touches 0),
    with the refits of SPAP's mask and of the exact optimum as the level the objective heads for."""
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.16,
                           subplot_titles=("objective ½‖WZ−Y‖² of the penalised W", "violation Σ sᵢ‖W[:,i]‖²"))
    figure.add_scatter(x=outcome.rhos, y=outcome.objectives, mode="lines+markers", name="objective", row=1, col=1)
    for name, level, dash in (("SPAP's refit", outcome.spap.objective, "dash"),
                              ("exact optimum", outcome.exact.objective, "dot"),
                              ("all channels kept", outcome.dense_objective, "dashdot")):
        figure.add_scatter(x=outcome.rhos[[0, -1]], y=[level, level], mode="lines", name=name,
                           line=dict(dash=dash, color="black" if name == "exact optimum" else "gray"), row=1, col=1)
    figure.add_scatter(x=outcome.rhos, y=outcome.violations, mode="lines+markers", name="violation", row=2, col=1)
    rho_axes(figure, outcome.rhos)
    figure.update_xaxes(title_text=RHO_AXIS, row=2, col=1)
    figure.update_yaxes(rangemode="tozero")
    figure.update_layout(title="Objective and violation as ρ grows", height=480,
                         legend=dict(orientation="h", y=-0.22), **LAYOUT)
    return figure


for field_name, widget_key in WIDGET_KEYS.items():  # defaults without value=, so scenarios can set them
    st.session_state.setdefault(widget_key, getattr(ToySettings(), field_name))

st.title("How SPAP works")
scenario_row = st.container(horizontal=True)  # buttons as wide as their names, wrapping: a name is never cut
for scenario in SCENARIOS:
    scenario_row.button(scenario.name, on_click=apply_scenario, args=(scenario.settings,), width="content",
                        key=f"toy_scenario_{scenario.name}", help="One click sets every setting below.")
picture_slot = st.container()  # the path chart and its sentence, drawn once the settings below are read

with st.container(border=True):
    st.markdown("**Settings of the toy layer**")
    first_column, second_column, third_column = st.columns(3, gap="medium")
    rho0 = first_column.select_slider("ρ⁽⁰⁾: initial penalty", RHO0_CHOICES, key="toy_rho0",
                                      help="The first iteration's penalty on W, in units of mean diag H.")
    tau = first_column.slider("τ: penalty growth", TAU_RANGE[0], TAU_RANGE[1], step=SPAP_DECLARED["tau"].step,
                              key="toy_tau", help="ρ is multiplied by τ after every iteration.")
    balance = first_column.slider("t: score balance", BALANCE_RANGE[0], BALANCE_RANGE[1],
                                  step=SPAP_DECLARED["t"].step, key="toy_t",
                                  help="Exponent of the activation magnitude in the score ‖W[:,i]‖·magnitudeᵗ.")
    momentum = second_column.slider("α: mask momentum", MOMENTUM_RANGE[0], MOMENTUM_RANGE[1],
                                    step=SPAP_DECLARED["alpha"].step, key="toy_alpha",
                                    help="Each iteration moves s this fraction of the way to the marked channels.")
    iterations = second_column.slider("K: ρ iterations", ITERATIONS_RANGE[0], ITERATIONS_RANGE[1], key="toy_K")
    n_prune = second_column.slider("λ: channels to prune", *N_PRUNE_RANGE, key="toy_lambda")
    score = third_column.radio("Activation magnitude in the score", TOY_SCORES, horizontal=True, key="toy_score",
                               help="marginal = ‖Zᵢ‖; partial = what channel i adds beyond the others.")
    schedule = third_column.radio("Marking schedule", SCHEDULES, horizontal=True, key="toy_schedule",
                                  help="fixed = λ channels marked every iteration; ramp = ⌈λk/K⌉ at iteration k.")
    correlated = third_column.checkbox("Correlated channels", key="toy_correlated",
                                       help="Channels share a few latent factors, as in real MLPs; then a channel's "
                                            "own magnitude says little about what the others cannot replace.")
    seed = third_column.number_input("Seed of the random layer", *SEED_RANGE, key="toy_seed")

settings = ToySettings(rho0=float(rho0), tau=float(tau), balance=float(balance), momentum=float(momentum),
                       iterations=int(iterations), n_prune=int(n_prune), score=score, schedule=schedule,
                       correlated=bool(correlated), seed=int(seed))
try:
    outcome = run_toy(settings)
except SpapInputError as exc:
    picture_slot.error(plain(exc))
    st.stop()

with picture_slot:
    show_chart(path_figure(outcome))
    st.markdown(path_picture(outcome))
    active = next((scenario for scenario in SCENARIOS if scenario.settings == settings), None)
    if active is not None and (story := active.story(outcome)) is not None:
        st.info(f"**{active.name}.** {story}", icon=":material/school:")
    with st.expander("The maths"):
        st.markdown(PROBLEM_TEXT)
        st.latex(PROBLEM_FORMULA)
        st.markdown(RELAXATION_TEXT)
        st.markdown(algorithm_text(settings))
        st.caption(mask_caption(outcome) + " " + norm_caption(outcome))

readout_column, objective_column = st.columns(2, gap="medium")
with readout_column:
    show_chart(readout_figure(outcome))
    st.caption(readout_caption(outcome))
with objective_column:
    show_chart(objective_figure(outcome))
    st.caption(objective_caption(outcome))
# the verdict gets a row of its own: in a narrow third column its words broke mid-word on a projector
table_column, verdict_column = st.columns([2, 3], gap="medium", vertical_alignment="center")
with table_column:
    st.markdown("**SPAP vs the exact optimum**")
    st.table(pd.DataFrame({
        "pruned": [", ".join(map(str, outcome.spap_pruned)), ", ".join(map(str, outcome.exact_pruned))],
        "objective": [f"{outcome.spap.objective:.4g}", f"{outcome.exact.objective:.4g}"],
    }, index=["SPAP", "exact (every mask)"]))
with verdict_column:
    if outcome.spap_is_optimal:
        st.success(verdict(outcome), icon=":material/check_circle:")
    else:
        st.warning(verdict(outcome))
        st.info(advice(outcome))
