"""voicescreen.train"""
