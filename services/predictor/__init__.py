"""The predict routes: v1 and the V2 inference protocol, thin protocol handlers over `services.serving`."""
