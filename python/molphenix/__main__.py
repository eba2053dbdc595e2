from molphenix.cli.main import app

app()
