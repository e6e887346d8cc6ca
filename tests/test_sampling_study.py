"""refusion sampling-study: deltas against the reference setting, and a summary without that reference."""
import pytest

from refusion.cli.sampling_study import REFERENCE, _print_summary, add_reference_deltas, within_target


def row(run, steps, psnr, lpips):
    return {"run": run, "steps": steps, "psnr": psnr, "ssim": 0.5, "lpips": lpips, "seconds_per_image": 0.1}


def test_deltas_are_taken_against_the_reference_setting(capsys):
    rows = [row(REFERENCE[0], REFERENCE[1], 30.0, 0.100), row("mr_ode", 10, 29.95, 0.103), row("mr_ode", 5, 29.5, 0.12)]
    assert add_reference_deltas(rows) is rows[0]
    assert rows[1]["psnr_delta"] == pytest.approx(-0.05) and rows[1]["lpips_delta"] == pytest.approx(0.003)
    assert within_target(rows[1]) and not within_target(rows[2])
    _print_summary(rows)
    assert "  -0.05" in capsys.readouterr().out


def test_a_study_without_the_reference_setting_prints_its_rows(capsys):
    rows = [row("mr_ode", 10, 29.95, None), row("mr_sde", 10, 30.1, None)]     # e.g. --steps 10 only
    assert add_reference_deltas(rows) is None
    assert not within_target(rows[0])
    _print_summary(rows)
    out = capsys.readouterr().out
    assert out.count("n/a") == 6   # dPSNR, LPIPS, dLPIPS of each row and "29.95" in out and "30.10" in out
