"""Progress bars: make reproduce-* shows training steps and clips in the terminal without touching notebooks."""

from flownar.progress import progress_bar


def test_terminal_mode_writes_to_the_process_stderr_even_when_the_caller_asked_for_none(monkeypatch, capfd):
    monkeypatch.setenv("FLOWNAR_PROGRESS", "terminal")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # make test sets it; it turns every tqdm bar off
    assert list(progress_bar(range(3), enabled=False, desc="narrating ek100/flownar")) == [0, 1, 2]
    err = capfd.readouterr().err
    assert "narrating ek100/flownar" in err and "3/3" in err
    list(progress_bar(range(3), never=True, desc="rank 1"))
    assert "rank 1" not in capfd.readouterr().err


def test_auto_mode_follows_the_caller(monkeypatch, capfd):
    monkeypatch.setenv("FLOWNAR_PROGRESS", "auto")
    assert progress_bar(range(2), enabled=False).disable
    monkeypatch.setenv("FLOWNAR_PROGRESS", "off")
    assert progress_bar(range(2), enabled=True).disable
