"""RoutePolicy's rule language and its compiled index."""
