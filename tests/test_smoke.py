from etm_compat.cli.main import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "etm-compat" in capsys.readouterr().out
