"""Jobs: the work behind the command line that the notebooks' workspace runs too (publishing
the champion, the demo service's process, the newsletter batch). No printing here: a job
reports through the callbacks it is given and raises errors that say what to do."""
