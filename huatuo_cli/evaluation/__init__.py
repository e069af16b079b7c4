"""`huatuo eval`: a bundle measured on multiple-choice medical VQA the way HuatuoGPT-Vision's authors
measured it (docs/eval.md): the data set (`data`), the official choice extraction (`scorer`), the
statistics (`stats`), the resumable loop (`runner`), the reports and the last-evaluation file beside
a bundle (`report`), and the PyTorch reference as a second answerer (`reference`)."""
