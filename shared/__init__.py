"""The pure core and what every process of mnist-service shares."""
