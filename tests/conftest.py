pytest_plugins = ["tests.redis_fixtures", "tests.live_fixtures", "tests.app_fixtures"]
