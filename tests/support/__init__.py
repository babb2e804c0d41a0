"""What the tests share: servers, processes, producers, data builders and the test apps."""
