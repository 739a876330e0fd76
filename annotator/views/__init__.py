"""One blueprint per area: auth, runs, clusters, concepts, media, api, audit."""
