"""WCAG 2.1 AA contrast of the web pages' stylesheet, pair by pair.

Every colour is a custom property of ``:root``; the stylesheet's convention (stated at
its top) says which text sits on which background:

- a rule that sets ``background-color`` also sets ``color``: that pair is checked;
- a rule that sets only ``color`` (or, in the chart, ``fill`` on text) puts text on
  the page or on a surface that keeps the page's text colour: it is checked against
  the page background and against each such surface;
- the chart's bars (``fill`` on ``.seg-*``) are graphics: 3:1 against the page.

Text needs 4.5:1 (success criterion 1.4.3), graphics 3:1 (1.4.11). The ratio is
computed as WCAG defines it, from the relative luminance of sRGB colours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import cloudimg.api.web

STYLESHEET = Path(cloudimg.api.web.__file__).parent / "static" / "style.css"
TEXT, GRAPHICS = 4.5, 3.0


def luminance(colour: str) -> float:
    """WCAG relative luminance of ``#rrggbb`` or ``#rgb``."""
    hex_digits = colour.lstrip("#")
    if len(hex_digits) == 3:
        hex_digits = "".join(c * 2 for c in hex_digits)
    assert re.fullmatch(r"[0-9a-fA-F]{6}", hex_digits), colour
    channels = [int(hex_digits[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_ratio_is_computed_as_wcag_defines_it() -> None:
    assert contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast("#ffffff", "#ffffff") == pytest.approx(1.0)
    assert contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)  # just fails AA
    assert contrast("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)  # just passes


@dataclass(frozen=True)
class Rule:
    selector: str
    declarations: dict[str, str]


def rules(css: str) -> list[Rule]:
    """Innermost ``selector { declarations }`` blocks (also those inside ``@media``)."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    found = []
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        declarations = {}
        for declaration in body.split(";"):
            name, colon, value = declaration.partition(":")
            if colon:
                declarations[name.strip()] = value.strip()
        found.append(Rule(" ".join(selector.split()), declarations))
    return found


@dataclass(frozen=True)
class Sheet:
    palette: dict[str, str]
    rules: list[Rule]

    def colour(self, value: str) -> str:
        match = re.fullmatch(r"var\((--[\w-]+)\)", value)
        assert match, f"colour {value!r} is not a custom property of :root"
        return self.palette[match[1]]

    @property
    def page(self) -> tuple[str, str]:
        body = next(r for r in self.rules if r.selector == "body").declarations
        return self.colour(body["color"]), self.colour(body["background-color"])


def sheet() -> Sheet:
    parsed = rules(STYLESHEET.read_text())
    root = next(r for r in parsed if r.selector == ":root")
    palette = {k: v for k, v in root.declarations.items() if k.startswith("--")}
    return Sheet(palette, [r for r in parsed if r.selector != ":root"])


def _is_text_fill(rule: Rule) -> bool:
    return "fill" in rule.declarations and not rule.selector.startswith(".seg-")


def pairs() -> list[tuple[str, str, str, float]]:
    """(what, foreground, background, required ratio) for every pair the sheet declares."""
    s = sheet()
    page_fg, page_bg = s.page
    found: list[tuple[str, str, str, float]] = []
    surfaces = [("page", page_bg)]
    for rule in s.rules:
        d = rule.declarations
        if "background-color" in d and s.colour(d["color"]) == page_fg:
            surfaces.append((rule.selector, s.colour(d["background-color"])))
    for rule in s.rules:
        d = rule.declarations
        if "background-color" in d:
            fg, bg = s.colour(d["color"]), s.colour(d["background-color"])
            found.append((rule.selector, fg, bg, TEXT))
        elif "color" in d or _is_text_fill(rule):
            fg = s.colour(d.get("color") or d["fill"])
            for where, bg in surfaces:
                found.append((f"{rule.selector} on {where}", fg, bg, TEXT))
        elif "fill" in d:
            found.append((rule.selector, s.colour(d["fill"]), page_bg, GRAPHICS))
    return found


def test_every_rule_with_a_background_says_its_text_colour() -> None:
    for rule in sheet().rules:
        assert "background" not in rule.declarations, f"{rule.selector}: use background-color"
        if "background-color" in rule.declarations:
            assert "color" in rule.declarations, rule.selector


def test_every_colour_is_a_custom_property_of_root() -> None:
    s = sheet()
    for rule in s.rules:
        for name, value in rule.declarations.items():
            for literal in re.findall(r"#[0-9a-fA-F]{3,8}\b|rgba?\(|hsla?\(", value):
                pytest.fail(f"{rule.selector} {{ {name}: {value} }}: {literal} is not in :root")
    for value in s.palette.values():
        luminance(value)  # every palette entry is a colour this test can rate


def test_every_declared_pair_meets_wcag_aa() -> None:
    checked = pairs()
    # The sheet's surfaces and texts: not an empty check.
    assert len(checked) >= 20
    assert {minimum for *_, minimum in checked} == {TEXT, GRAPHICS}
    failing = [
        f"{what}: {fg} on {bg} is {contrast(fg, bg):.2f}:1, needs {minimum}:1"
        for what, fg, bg, minimum in checked
        if contrast(fg, bg) < minimum
    ]
    assert not failing, "\n".join(failing)
