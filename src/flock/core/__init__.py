"""The orchestrator core: artifacts, visibility, agents, scheduling and stores."""
