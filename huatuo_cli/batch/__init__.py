"""`huatuo batch`: every question of every study in a folder, durable and resumable."""
