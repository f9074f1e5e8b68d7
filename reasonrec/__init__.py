"""reasonrec: deliberate (System-2) LLM reasoning for recommender systems.

Four published methods (R4ec, TrackRec, STARec, ThinkRec) and their baselines on one substrate:
``data`` → ``llm`` → ``train`` → ``knowledge`` → ``rec`` → ``eval``; ``methods`` compose them.
"""

__version__ = "0.1.0"
