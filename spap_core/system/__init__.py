"""What the library asks of the machine: which files a request may touch (access), whether the Hugging
Face hub answers (hub), and returning freed memory to the operating system (memory). Imports nothing
else of spap_core but its errors.
"""
